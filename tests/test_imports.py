"""What importing costs: the command line starts without the heavy libraries (Open3D, scipy, torch, trimesh: each is
imported where it is used), and Open3D imports without its plotting modules (pipeline/open3d_import.py), which
still work when asked for."""
import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_open3d_imports_without_plotly_and_dash():
    out = _run("""
        import sys
        import pipeline, open3d
        print(sorted(m for m in ("plotly", "dash", "IPython", "requests") if m in sys.modules))
    """)
    assert out == "[]"


def test_the_deferred_plotting_functions_load_the_real_module():
    out = _run("""
        import sys
        import pipeline, open3d as o3d
        fig = o3d.visualization.get_plotly_fig([o3d.geometry.TriangleMesh.create_box()])
        real = sys.modules["open3d.visualization.draw_plotly"]
        print(type(fig).__name__, "dash" in sys.modules, getattr(real, "_promptmesh_stand_in", False),
              o3d.visualization.get_plotly_fig is real.get_plotly_fig, callable(real.get_point_object))
    """)
    assert out == "Figure True False True True"


def test_open3d_imported_first_is_left_alone():
    out = _run("""
        import sys
        import open3d, pipeline
        print(getattr(sys.modules["open3d.visualization.draw_plotly"], "_promptmesh_stand_in", False))
    """)
    assert out == "False"


def test_the_command_line_starts_without_heavy_libraries():
    out = _run("""
        import sys
        import pipeline.cli, pipeline.runner, pipeline.compare, pipeline.view
        print(sorted(m for m in ("open3d", "scipy", "torch", "trimesh") if m in sys.modules))
    """)
    assert out == "[]"


def test_the_command_line_freezes_the_heap_before_the_interpreter_exits():
    """`main` freezes the objects made so far out of the garbage collector whichever way the command ends (click
    ends it with SystemExit): the shutdown's collections would otherwise traverse all of Open3D's bindings."""
    out = _run("""
        import gc, sys
        import open3d
        from pipeline.cli import main
        before = gc.get_freeze_count()
        for argv in (["promptmesh", "--help"], ["promptmesh", "no-such-command"]):
            sys.argv = argv
            try:
                main()
            except SystemExit as e:
                print(e.code, before == 0 and gc.get_freeze_count() > 10000, end=" ")
            gc.unfreeze()
    """)
    assert out.split()[-4:] == ["0", "True", "2", "True"]
