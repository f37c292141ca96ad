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


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_models_import_neither_the_engine_nor_the_data_layer():
    """A batch flows data -> models -> train: models are plain modules over collated batches
    (per-sample work such as tokenising happens in the data pipeline), so they import none of
    westkit.train, westkit.data or westkit.decode, at module level or inside functions."""
    offenders = [f"{p.relative_to(ROOT)}: {n}" for p in (ROOT / "westkit" / "models").rglob("*.py")
                 for n in _imports(p) if n.split(".")[:2] in (["westkit", "train"], ["westkit", "data"],
                                                               ["westkit", "decode"])]
    assert offenders == []


def test_recipes_never_ask_which_rank_they_are():
    """Rank 0 is handled structurally (`westkit.recipe.Run.say`, the engine's logger)."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "recipes").rglob("*.py")
                 if "is_main" in p.read_text() or "get_rank" in p.read_text()]
    assert offenders == []


def test_one_sample_rate_constant():
    """16 kHz is written once (westkit.models.features.SAMPLE_RATE); everything else imports it."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "westkit").rglob("*.py")
                 if "16000" in p.read_text() and p != ROOT / "westkit" / "models" / "features.py"]
    assert offenders == []


def test_recipe_commands_in_docs_and_help_name_real_files_and_flags():
    """Every example command that runs a recipe (README, docs/, launch/submit.py --help) names
    config files that exist, every flag the recipe requires, and no flag it lacks."""
    import re

    sources = [ROOT / "README.md", ROOT / "launch" / "submit.py", *sorted((ROOT / "docs").glob("*.md"))]
    problems, checked = [], 0
    for source in sources:
        text = re.sub(r"\\\n\s*", " ", source.read_text())        # join continued lines
        for line in text.splitlines():
            for m in re.finditer(r"(recipes/\w+/\w+\.py) (--[^`|&;\n]*)", line):
                script, args = ROOT / m[1], m[2].replace("'", " ").replace('"', " ").split()
                if "..." in args or not script.is_file():
                    continue
                code = script.read_text()
                if "recipe.start(" in code:  # the CLI comes from the shared scaffolding
                    code += (ROOT / "westkit" / "recipe.py").read_text()
                required = re.findall(r"add_argument\(\"(--[\w-]+)\"[^)]*required=True", code)
                flags = [a.split("=")[0] for a in args if a.startswith("--")]
                problems += [f"{source.name}: {m[0]}: no {a}" for a in args
                             if a.startswith("recipes/") and a.endswith(".yaml") and not (ROOT / a).is_file()]
                problems += [f"{source.name}: {m[0]}: {m[1]} has no {f}" for f in flags
                             if f'"{f}"' not in code]
                problems += [f"{source.name}: {m[0]}: {m[1]} requires {f}" for f in required
                             if f not in flags]
                checked += 1
    assert checked >= 10 and problems == []
