"""The arrows point one way: recipes -> westkit, launch -> westkit; westkit never imports recipes."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_recipes_is_not_importable():
    out = subprocess.run([sys.executable, "-c", "import recipes"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode != 0 and "never imports a recipe" in out.stderr


def test_westkit_never_imports_recipes_or_launch():
    offenders = []
    for path in (ROOT / "westkit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names
                          if n.split(".")[0] in ("recipes", "launch")]
    assert offenders == []


def test_models_have_no_distributed_code():
    """Models are plain modules: ZeRO, freezing and precision live in the engine."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "westkit" / "models").rglob("*.py")
                 if "torch.distributed" in p.read_text() or "deepspeed" in p.read_text()]
    assert offenders == []
