"""Let machines hold the line (STYLE.md): the pure decision core imports no IO, no clock,
no threads; what ships to a compute host never imports the simulator or the lab; nothing
under meshha/ calls `time.sleep`. Checked on the syntax tree, so comments and strings do
not count and aliases (`import time as t`) do. Importing a module runs its parent
packages' `__init__.py` first, so the walks below follow those too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import meshha

PACKAGE = Path(meshha.__file__).parent
ROOT = PACKAGE.parent

PURE = (
    "meshha/raft/entries.py",
    "meshha/raft/state.py",
    "meshha/recovery/verdicts.py",
    "meshha/recovery/decide/__init__.py",
    "meshha/recovery/policy.py",
    "meshha/recovery/placement.py",
    "meshha/recovery/evacuation.py",
    "meshha/probes/swim.py",
    "meshha/config/model.py",
    "meshha/config/synthetic.py",
    "meshha/ledger/report.py",
)
# What runs on a compute host: never the simulator or the real-component lab.
PRODUCTION = ("agent", "config", "ledger", "probes", "raft", "recovery")
HARNESS = ("meshha.sim", "meshha.lab")
# The one shipped door into the simulator: `meshctl sim` imports it lazily, inside the
# command, so no other meshctl command (and no agent) loads it.
SIM_DOOR = {"meshha/cli.py": "meshha.sim"}
FORBIDDEN = frozenset(
    {
        "trio",
        "libvirt",
        "pysyncobj",
        "sqlite3",
        "socket",
        "threading",
        "time",
        "datetime",
        "subprocess",
    }
)
# Lab tooling that still polls with time.sleep. Each is its own xfail case: fixing one
# turns it into an XPASS (strict), which fails until it is taken off this list.
KNOWN_SLEEPERS = {
    "meshha/lab/chassis.py": "ipmi_sim chassis script simulates a slow BMC with time.sleep",
    "meshha/lab/mesh.py": "poll_until, the lab's one synchronous poll to a deadline (Mesh and Cloud use it)",
    "meshha/lab/lab_host.py": "a lab host's init polls libvirtd's socket at boot, children at stop",
}


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def all_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imported_modules(tree: ast.Module) -> set[str]:
    """Every module an import statement anywhere in `tree` names, in full."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def module_path(name: str) -> Path | None:
    """The file of a meshha module or package, if `name` is one."""
    if name != "meshha" and not name.startswith("meshha."):
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def loaded_by_import(name: str) -> list[Path]:
    """The files that `import name` runs: every parent package's `__init__.py`, then the
    module itself (for `from pkg import x`, x may be a module or a name in pkg)."""
    parts = name.split(".")
    files = []
    for i in range(1, len(parts) + 1):
        path = module_path(".".join(parts[:i]))
        if path is not None:
            files.append(path)
    return files


def reachable(start: Path) -> dict[str, str]:
    """Every meshha file that importing `start` can run, with the chain that reaches it."""
    seen: dict[str, str] = {}
    todo = [(start, rel(start))]
    for parent in loaded_by_import(rel(start).removesuffix(".py").replace("/", ".")):
        todo.append((parent, f"parent package {rel(parent)}"))
    while todo:
        path, via = todo.pop()
        if rel(path) in seen:
            continue
        seen[rel(path)] = via
        for m in imported_modules(parse(path)):
            for dep in loaded_by_import(m):
                todo.append((dep, f"{via} -> {rel(dep)}"))
    return seen


def time_sleep_calls(tree: ast.Module) -> list[int]:
    """Lines calling time.sleep, however `time` or `sleep` was imported."""
    time_names = {"time"}
    sleep_names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            time_names |= {a.asname or a.name for a in node.names if a.name == "time"}
        elif isinstance(node, ast.ImportFrom) and node.module == "time":
            sleep_names |= {a.asname or a.name for a in node.names if a.name == "sleep"}
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if (
            isinstance(f, ast.Attribute)
            and f.attr == "sleep"
            and isinstance(f.value, ast.Name)
            and f.value.id in time_names
        ) or (isinstance(f, ast.Name) and f.id in sleep_names):
            lines.append(node.lineno)
    return lines


# -- the checker checks ------------------------------------------------------------------


def test_the_checkers_see_through_aliases() -> None:
    src = (
        "import time as clock\nfrom time import sleep as nap\nimport trio.lowlevel\n"
        "from socket import socket\n"
        "def f():\n    clock.sleep(1)\n    nap(2)\n    trio.sleep(3)\n    '''time.sleep(4)'''\n"
    )
    tree = ast.parse(src)
    assert time_sleep_calls(tree) == [6, 7]
    assert {n.split(".")[0] for n in imported_modules(tree)} == {"time", "trio", "socket"}


# -- every module parses -----------------------------------------------------------------


@pytest.mark.parametrize("path", all_modules(), ids=rel)
def test_every_module_parses(path: Path) -> None:
    parse(path)


def test_the_pure_modules_exist() -> None:
    for name in PURE:
        assert (ROOT / name).is_file(), name


# -- the pure core -----------------------------------------------------------------------


@pytest.mark.parametrize("name", PURE)
def test_a_pure_module_imports_no_io_clock_or_threads(name: str) -> None:
    roots = {m.split(".")[0] for m in imported_modules(parse(ROOT / name))}
    assert not roots & FORBIDDEN, f"{name} imports {sorted(roots & FORBIDDEN)}"


@pytest.mark.parametrize("name", PURE)
def test_a_pure_module_reaches_no_io_through_meshha(name: str) -> None:
    """What a pure module imports from meshha is pure too, all the way down, including
    the `__init__.py` of every package on the way."""
    for path, via in reachable(ROOT / name).items():
        mods = imported_modules(parse(ROOT / path))
        bad = {m.split(".")[0] for m in mods} & FORBIDDEN
        assert not bad, f"{name} reaches {sorted(bad)} through {via}"
        assert not path.startswith(("meshha/lab/", "meshha/sim/")), via


def production_modules() -> list[Path]:
    return [p for p in all_modules() if rel(p).split("/")[1] in PRODUCTION]


@pytest.mark.parametrize("path", production_modules(), ids=rel)
def test_production_never_imports_the_simulator_or_the_lab(path: Path) -> None:
    for reached, via in reachable(path).items():
        assert not reached.startswith(("meshha/lab/", "meshha/sim/")), via


def test_meshctl_loads_the_simulator_only_for_meshctl_sim() -> None:
    """cli.py imports meshha.sim only inside functions (the `sim` command), never at
    module level, and never the lab."""
    tree = parse(ROOT / "meshha/cli.py")
    top_level = imported_modules(ast.Module(body=tree.body, type_ignores=[]))
    top_level_imports = {
        m
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        for m in imported_modules(ast.Module(body=[node], type_ignores=[]))
    }
    assert not any(m.startswith(HARNESS) for m in top_level_imports), top_level
    every = imported_modules(tree)
    assert not any(m.startswith("meshha.lab") for m in every)
    assert any(m.startswith(SIM_DOOR["meshha/cli.py"]) for m in every)


def test_the_tidy_walk_follows_parent_packages(tmp_path: Path) -> None:
    """A module reached as `meshha.config.model` also runs meshha/config/__init__.py."""
    files = [rel(p) for p in loaded_by_import("meshha.config.model")]
    assert files == ["meshha/__init__.py", "meshha/config/__init__.py", "meshha/config/model.py"]


def test_every_package_says_what_is_pure_and_what_is_an_adapter() -> None:
    for pkg in (*PRODUCTION, "sim", "lab"):
        doc = ast.get_docstring(parse(PACKAGE / pkg / "__init__.py"))
        assert doc, f"meshha/{pkg}/__init__.py has no docstring"


# -- no time.sleep anywhere --------------------------------------------------------------


def sleep_case(path: Path) -> object:
    name = rel(path)
    if name in KNOWN_SLEEPERS:
        return pytest.param(
            path,
            id=name,
            marks=pytest.mark.xfail(
                strict=True, reason=f"calls time.sleep: {KNOWN_SLEEPERS[name]}"
            ),
        )
    return pytest.param(path, id=name)


@pytest.mark.parametrize("path", [sleep_case(p) for p in all_modules()])
def test_no_module_calls_time_sleep(path: Path) -> None:
    lines = time_sleep_calls(parse(path))
    assert not lines, f"{rel(path)} calls time.sleep at lines {lines}"
