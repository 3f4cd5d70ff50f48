"""The package layout: ``platform/`` installs as ``driftlab.platform`` and never
shadows the standard library's ``platform`` module."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_stdlib_platform_not_shadowed_from_repo_root():
    out = subprocess.run([sys.executable, "-c", "import platform; print(platform.system())"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() in {"Linux", "Darwin", "Windows"}


def test_driftlab_packages_import():
    import driftlab.platform.world as world
    import driftlab.actors  # noqa: F401
    import driftlab.deployments  # noqa: F401

    assert "day_night" in world.SCENARIOS
    assert not (ROOT / "platform" / "__init__.py").exists()


def test_config_and_the_strategy_registry_load_without_torch():
    # Configs are a leaf and the registry only names classes: checking a
    # config or a strategy name (what the CLI does before anything starts)
    # loads neither torch nor a model.
    code = ("import sys, driftlab.platform.config, driftlab.platform.strategies as s;"
            "s.parse_strategy('ams+refit'); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
