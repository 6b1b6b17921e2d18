"""Finding and loading a project's build file, ``kilnfile.py``.

The project root is the nearest folder, from the current one upwards, that
holds a ``kilnfile.py``. Loading runs the file once, collecting its
``@target`` functions; a syntax error or an exception while loading is a
clear error naming the file and line.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec, PathFinder, SourceFileLoader
from pathlib import Path
from types import CodeType

from kiln import errors
from kiln.engine import rules
from kiln.engine.root import BUILD_FILE


@dataclass(frozen=True)
class Project:
    root: Path
    build_file: Path
    targets: dict[str, rules.Target]
    code_files: tuple[str, ...] = ()  # the build file and project modules it imported

    def target(self, name: str) -> rules.Target:
        try:
            return self.targets[name]
        except KeyError:
            raise errors.unknown_target(self.build_file, name, list(self.targets)) from None


def load(root: Path) -> Project:
    """Run the build file under ``root`` and collect its targets."""
    path = root / BUILD_FILE
    text = path.read_text()
    try:
        code = compile(text, str(path), "exec")
    except SyntaxError as e:
        raise errors.KilnError(
            f"{path}:{e.lineno}: syntax error: {e.msg}",
            hint="fix the build file",
            exit_code=errors.ExitCode.BAD_INPUT,
        ) from None
    namespace = {"__name__": "kilnfile", "__file__": str(path)}
    rules._defining = defined = []
    sys.path.insert(0, str(root))  # so the build file can import the project's helpers
    finder = _ProjectModules(root.resolve())
    sys.meta_path.insert(0, finder)
    modules_before = set(sys.modules)
    try:
        exec(code, namespace)
    except errors.KilnError:
        raise
    except (Exception, SystemExit) as e:  # sys.exit() is no way to succeed
        raise user_code_error(e, str(path), "loading the build file") from None
    finally:
        rules._defining = None
        sys.meta_path.remove(finder)
        sys.path.remove(str(root))
    helpers = [
        str(Path(file).resolve())
        for name in set(sys.modules) - modules_before
        if (file := getattr(sys.modules[name], "__file__", None))
        and Path(file).resolve().is_relative_to(root.resolve())
    ]
    return Project(root, path, {t.name: t for t in defined}, (str(path.resolve()), *helpers))


class _FromSource(SourceFileLoader):
    """Loads a project module from its source, never from a bytecode cache:
    Python trusts a ``.pyc`` whose recorded source size and mtime (in whole
    seconds) match, so a same-size edit saved within the second would run
    the old code. (Nor is a ``__pycache__`` written into the project.)"""

    def get_code(self, fullname: str) -> CodeType:
        path = self.get_filename(fullname)
        return compile(self.get_data(path), path, "exec", dont_inherit=True)


class _ProjectModules(MetaPathFinder):
    """While the build file loads: the project's own modules load ``_FromSource``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: object = None
    ) -> ModuleSpec | None:
        spec = PathFinder.find_spec(name, path)
        if (
            spec is None or spec.origin is None or not isinstance(spec.loader, SourceFileLoader)
            or not Path(spec.origin).resolve().is_relative_to(self.root)
        ):  # fmt: skip
            return None
        spec.loader = _FromSource(spec.loader.name, spec.loader.path)
        spec.cached = None
        return spec


def user_code_error(exc: BaseException, build_file: str, what: str) -> errors.KilnError:
    """An exception from build-file code, reported at its build-file line."""
    frames = traceback.extract_tb(exc.__traceback__)
    line = next((f.lineno for f in reversed(frames) if f.filename == build_file), None)
    where = f"{build_file}:{line}" if line else build_file
    if isinstance(exc, SystemExit):
        return errors.KilnError(
            f"{where}: {what} called sys.exit({exc.code!r}), which cannot end a build",
            hint="raise an exception to fail the build, or return from the target",
            exit_code=errors.ExitCode.BAD_INPUT,
        )
    return errors.KilnError(
        f"{where}: {what} raised {type(exc).__name__}: {exc}",
        hint="fix the build file",
        exit_code=errors.ExitCode.BAD_INPUT,
    )
