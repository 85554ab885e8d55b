// promptmesh viewer: draws mesh.glb unlit with orbit controls and a two-point measuring tool.
//
// The mesh is in the capture's world frame, metres, Y up; nothing here moves or scales it, so a distance
// between two picked points is in metres. Page data (start view, mesh file) comes from the JSON block
// #view-data that `promptmesh view` writes. `?pick=x,y;x,y` (fractions of the canvas, 0..1 from the
// top-left) measures between those two screen points once the mesh has loaded, for scripted checks.
import * as THREE from 'three';
import { OrbitControls } from 'three/addons/controls/OrbitControls.js';
import { GLTFLoader } from 'three/addons/loaders/GLTFLoader.js';

const data = JSON.parse(document.getElementById('view-data').textContent);
const canvas = document.getElementById('scene');
const statusLine = document.getElementById('status');
const result = document.getElementById('measure-result');
const toggle = document.getElementById('measure-toggle');

const renderer = new THREE.WebGLRenderer({ canvas, antialias: true, preserveDrawingBuffer: true });
renderer.setPixelRatio(window.devicePixelRatio);
// Unlit; glTF vertex colours are linear and textures sRGB (three.js decodes both to linear), and the output is
// encoded to sRGB again: the captured colours reach the screen as they were captured.
renderer.outputColorSpace = THREE.SRGBColorSpace;
const scene = new THREE.Scene();
scene.background = new THREE.Color(0x1d2026);
const camera = new THREE.PerspectiveCamera(60, 1, 0.01, 1000);
const controls = new OrbitControls(camera, canvas);
controls.addEventListener('change', render);
const raycaster = new THREE.Raycaster();
const meshes = [];
const box = new THREE.Box3();
let sceneSize = 1;

function render() {
  renderer.render(scene, camera);
}

function resize() {
  renderer.setSize(window.innerWidth, window.innerHeight, false);
  camera.aspect = window.innerWidth / window.innerHeight;
  camera.updateProjectionMatrix();
  render();
}
window.addEventListener('resize', resize);

/** Replace every material by an unlit one that keeps its texture and vertex colours. */
function makeUnlit(root) {
  root.traverse((object) => {
    if (!object.isMesh) return;
    const old = object.material;
    const map = old.map || null;
    if (map) {
      map.colorSpace = THREE.SRGBColorSpace; // the texture holds sRGB, as glTF specifies
      map.needsUpdate = true;
    }
    object.material = new THREE.MeshBasicMaterial({
      map, vertexColors: object.geometry.hasAttribute('color'), side: THREE.DoubleSide,
    });
    old.dispose();
  });
}

function setClipping() {
  camera.near = sceneSize / 2000;
  camera.far = sceneSize * 20;
  camera.updateProjectionMatrix();
}

/** The pose of the capture's middle frame, orbiting about the surface point it looks at. */
function startView() {
  const start = data.start;
  if (!start) return fitView();
  camera.fov = start.vfov_deg;
  camera.position.fromArray(start.eye);
  const forward = new THREE.Vector3().fromArray(start.forward).normalize();
  raycaster.set(camera.position, forward);
  const hit = raycaster.intersectObjects(meshes, false)[0];
  const centre = box.getCenter(new THREE.Vector3());
  const distance = hit ? hit.distance : Math.max(centre.sub(camera.position).dot(forward), sceneSize * 0.1);
  controls.target.copy(camera.position).addScaledVector(forward, distance);
  setClipping();
  controls.update();
  render();
}

/** The whole mesh from above and to the side. */
function fitView() {
  const centre = box.getCenter(new THREE.Vector3());
  camera.fov = 50;
  camera.position.copy(centre).add(new THREE.Vector3(0.6, 0.8, 1.0).normalize().multiplyScalar(sceneSize * 1.1));
  controls.target.copy(centre);
  setClipping();
  controls.update();
  render();
}

// ------------------------------------------------------------------------------------------ measuring
const markers = new THREE.Group();
markers.renderOrder = 10;
scene.add(markers);
const picks = [];
let measuring = false;

function clearMeasure() {
  picks.length = 0;
  for (const child of [...markers.children]) {
    child.geometry.dispose();
    markers.remove(child);
  }
  result.textContent = '';
  delete result.dataset.distanceM;
  delete result.dataset.points;
}

function addPoint(point) {
  if (picks.length === 2) clearMeasure();
  picks.push(point.clone());
  const material = new THREE.MeshBasicMaterial({ color: 0xffd400, depthTest: false });
  const dot = new THREE.Mesh(new THREE.SphereGeometry(sceneSize * 0.004, 16, 8), material);
  dot.position.copy(point);
  markers.add(dot);
  if (picks.length === 2) {
    const line = new THREE.Line(new THREE.BufferGeometry().setFromPoints(picks),
                                new THREE.LineBasicMaterial({ color: 0xffd400, depthTest: false }));
    markers.add(line);
    const distanceM = picks[0].distanceTo(picks[1]);
    result.textContent = `${distanceM.toFixed(3)} m`;
    result.dataset.distanceM = String(distanceM);
    result.dataset.points = JSON.stringify(picks.map((p) => p.toArray()));
  } else {
    result.textContent = 'click a second point';
  }
  render();
}

/** Pick the surface under canvas fractions (fx, fy), 0..1 from the top-left; returns the point or null. */
function pickAt(fx, fy) {
  raycaster.setFromCamera(new THREE.Vector2(fx * 2 - 1, 1 - fy * 2), camera);
  const hit = raycaster.intersectObjects(meshes, false)[0];
  if (!hit) {
    result.textContent = 'no surface there';
    return null;
  }
  addPoint(hit.point);
  return hit.point;
}

toggle.addEventListener('click', () => {
  measuring = !measuring;
  toggle.classList.toggle('on', measuring);
  canvas.style.cursor = measuring ? 'crosshair' : '';
  if (!measuring) clearMeasure();
  render();
});

let down = null;
canvas.addEventListener('pointerdown', (e) => { down = [e.clientX, e.clientY]; });
canvas.addEventListener('pointerup', (e) => {
  const moved = down ? Math.hypot(e.clientX - down[0], e.clientY - down[1]) : Infinity;
  down = null;
  if (!measuring || moved > 4) return; // a drag orbits; only a click measures
  const rect = canvas.getBoundingClientRect();
  pickAt((e.clientX - rect.left) / rect.width, (e.clientY - rect.top) / rect.height);
});

document.getElementById('view-start').addEventListener('click', startView);
document.getElementById('view-fit').addEventListener('click', fitView);

// ------------------------------------------------------------------------------------------ loading
// GLTFLoader decodes embedded textures with createImageBitmap where the browser has it; that path has been seen
// never to resolve in headless Chromium with SwiftShader, so its parser gets a TextureLoader (an <img> element,
// which every browser has) instead.
const loader = new GLTFLoader();
loader.register((parser) => {
  parser.textureLoader = new THREE.TextureLoader(parser.options.manager);
  return { name: 'promptmesh_texture_loader' };
});

resize();
loader.load(data.mesh, (gltf) => {
  makeUnlit(gltf.scene);
  scene.add(gltf.scene);
  gltf.scene.updateMatrixWorld(true);
  gltf.scene.traverse((object) => { if (object.isMesh) meshes.push(object); });
  box.setFromObject(gltf.scene);
  sceneSize = Math.max(box.getSize(new THREE.Vector3()).length(), 1e-3);
  let triangles = 0;
  for (const m of meshes) triangles += (m.geometry.index ? m.geometry.index.count : m.geometry.attributes.position.count) / 3;
  startView();
  statusLine.textContent = `${triangles.toLocaleString('en')} triangles, ${sceneSize.toFixed(2)} m across`;
  const pick = new URLSearchParams(window.location.search).get('pick');
  if (pick) {
    measuring = true;
    for (const xy of pick.split(';')) pickAt(...xy.split(',').map(Number));
  }
  document.body.dataset.viewport = `${window.innerWidth}x${window.innerHeight}`;
  document.body.dataset.ready = '1';
}, undefined, (error) => {
  statusLine.textContent = `could not load ${data.mesh}: ${error.message || error}`;
  document.body.dataset.ready = 'error';
});
