// Usage: node tools/node/validate_gltf.js FILE.glb  -> prints the Khronos glTF validator's JSON report.
// Exit status 0 when the report has no errors, 1 otherwise.
const fs = require("fs");
const path = require("path");
const validator = require("gltf-validator");

const file = process.argv[2];
validator.validateBytes(new Uint8Array(fs.readFileSync(file)), {
  uri: path.basename(file),
  maxIssues: 100,
  externalResourceFunction: (uri) => Promise.reject(new Error(`external resource ${uri} not allowed`)),
}).then((report) => {
  console.log(JSON.stringify(report, null, 1));
  process.exit(report.issues.numErrors === 0 ? 0 : 1);
}).catch((error) => {
  console.error(`validate_gltf: ${error}`);
  process.exit(2);
});
