"""IOC configuration: YAML validated by pydantic, with errors that name the key and its line.

A user mistake gives one line such as
    my-ioc.yml line 7: plugins[0].input: no port named 'SIM2' (known: Image1, SIM1)
and nothing else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import safepath
from .cluster.config import ClusterConfig
from .safepath import Location, PathRefused


class ConfigError(Exception):
    """A config mistake, already formatted as one line for the user."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DriverConfig(_Strict):
    type: str = Field(description="driver name, e.g. 'sim'")
    port: str = Field(min_length=1, description="asyn-style port name, e.g. SIM1")
    prefix: str = Field("cam1:", description="the R macro: PVs are $(P)$(R)<name>")
    pool_mb: float = Field(0.0, ge=0, description="array pool limit in MB, 0 = unlimited")
    loss_policy: Literal["drop", "pause"] = Field(
        "drop", description="frames the pipeline cannot take: dropped (counted), or the "
        "acquisition pauses until there is room (LossPolicy)")
    asg: str = Field("DEFAULT", description="the access security group of its PVs (ASG in "
                     "the access_security file)")
    options: dict[str, Any] = Field(default_factory=dict, description="driver-specific")


class PluginConfig(_Strict):
    type: str = Field(description="plugin name, e.g. 'stdarrays'")
    port: str = Field(min_length=1)
    prefix: str
    input: str = Field("", description="upstream port (NDArrayPort)")
    address: int = Field(0, ge=0, description="upstream address (NDArrayAddress)")
    enabled: bool = Field(True, description="EnableCallbacks at start")
    blocking: bool = Field(False, description="BlockingCallbacks at start")
    queue_size: int = Field(20, ge=1)
    loss_policy: Literal["drop", "block"] = Field(
        "drop", description="a frame finding the queue full: drop it (recorded as lost) or "
        "make the upstream wait (LossPolicy)")
    max_threads: int = Field(1, ge=1, le=64)
    pool_mb: float = Field(0.0, ge=0)
    asg: str = Field("DEFAULT", description="the access security group of its PVs (ASG in "
                     "the access_security file)")
    options: dict[str, Any] = Field(default_factory=dict)


class PublishConfig(_Strict):
    interval_s: float = Field(0.02, gt=0, le=1.0,
                              description="shortest time between two updates of one PV")
    array_mb_per_s: float = Field(0.0, ge=0, le=1e6,
                                  description="a cap on the rate of large waveforms, MB/s per "
                                  "PV (0: none; they are paced by what the clients drain)")


class AccessSecurityConfig(_Strict):
    file: str = Field("", description="an EPICS access security file (ACF: UAG, HAG, ASG, "
                      "RULE), relative to this file; empty: every client may read and write")
    client_ip: bool = Field(False, description="match HAGs against the client's address (HAG "
                            "names resolved), as EPICS' asCheckClientIP, not the host name the "
                            "client reports")


class IOCConfig(_Strict):
    prefix: str = Field("13SIM1:", description="the P macro")
    algorithm_folders: list[str] = Field(
        default_factory=list, description="the only folders Python algorithm files load from "
        "(relative to this file)")
    screens_dir: str = Field("", description="where `ndflow run` writes the .bob screens "
                             "(relative to this file, ~ expanded; empty: none)")
    data_roots: list[str] = Field(
        default_factory=list, description="the only folders file writers (HDF5, TIFF) write "
        "under; FilePath outside them is refused (relative to this file, ~ expanded)")
    drivers: list[DriverConfig] = Field(min_length=1)
    plugins: list[PluginConfig] = Field(default_factory=list)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    transports: list[str] = Field(
        default_factory=lambda: ["ca", "pva"], description="the protocols every PV is served "
        "over: ca (Channel Access), pva (pvAccess); both by default, as an EPICS 7 IOC with QSRV")
    access_security: AccessSecurityConfig = Field(default_factory=AccessSecurityConfig)
    memory_budget_mb: float = Field(
        -1.0, ge=-1.0, description="what all array pools may hold together (frames in queues, "
        "Capture buffers, deferred processing), in MB; 0 = no limit; -1 = half the machine's "
        "memory")
    cluster: ClusterConfig | None = Field(
        None, description="one IOC over several MPI ranks (`mpiexec -n N ndflow run`): the "
        "ranks' roles and the frame dispatch (ndflow.cluster); absent: one process, no MPI")


@dataclass(frozen=True)
class Site:
    """Where this IOC's files are, resolved against the config file's folder."""

    base_dir: Path
    algorithm_folders: tuple[Path, ...] = ()
    screens_dir: Path | None = None
    data_roots: tuple[Path, ...] = ()
    #: the data roots as the config spells them (absolute, ~ expanded, not resolved), each
    #: paired with its resolved root, so a FilePath typed through a link *above* a root (a
    #: configured root such as /data/x where /data is a link) is still recognised
    root_spellings: tuple[tuple[Path, Path], ...] = ()
    #: the effective IOC configuration as JSON, written once into each file (static metadata)
    config_json: str = ""

    @classmethod
    def of(cls, config: IOCConfig, base_dir: Path) -> "Site":
        folders = tuple((base_dir / f).resolve() for f in config.algorithm_folders)
        screens = ((base_dir / Path(config.screens_dir).expanduser()).resolve()
                   if config.screens_dir else None)
        spelled = [Path(os.path.normpath(base_dir / Path(r).expanduser()))
                   for r in config.data_roots]
        roots = tuple(p.resolve() for p in spelled)
        return cls(base_dir, folders, screens, roots,
                   tuple((s, r) for s, r in zip(spelled, roots) if s != r),
                   config.model_dump_json())

    def data_path(self, path: str | Path) -> Path:
        """`path` (absolute, symlinks resolved) if it lies under a data root; otherwise
        ValueError. For readers that only check a folder once (the FITS driver's Folder); the
        file writers use `locate` and open through `ndflow.safepath`, which cannot be raced."""
        resolved = Path(path).expanduser()
        if not resolved.is_absolute():
            raise ValueError(f"{path}: give an absolute path")
        resolved = resolved.resolve()
        if not self.data_roots:
            raise ValueError("no data_roots configured; file writers write only under those")
        if not inside(resolved, self.data_roots):
            raise ValueError(f"{path} is outside the data roots "
                             f"({', '.join(map(str, self.data_roots))})")
        return resolved

    def locate(self, path: str | Path) -> Location:
        """The data root `path` lies under and the components below it, from the text alone
        (PathRefused, a ValueError, if none). Nothing is resolved here: the writers open the
        result with `safepath.open_folder`/`create_file`, one component at a time from the
        root's descriptor with links refused, so the check and the open are one step."""
        if not self.data_roots:
            raise PathRefused("no data_roots configured; file writers write only under those")
        text = os.path.expanduser(os.fspath(path))
        if not os.path.isabs(text):
            raise PathRefused(f"{path}: give an absolute path")
        roots = {root: root for root in self.data_roots}
        roots.update({spelled: root for spelled, root in self.root_spellings})
        try:
            where = safepath.locate(text, list(roots))
        except PathRefused:  # named with the roots as resolved
            raise PathRefused(f"{path} is outside the data roots "
                              f"({', '.join(map(str, self.data_roots))})") from None
        return Location(roots[where.root], where.parts)

    @property
    def read_folders(self) -> tuple[Path, ...]:
        """The folders a file a PV names (NDAttributesFile) may be read from: the config file's
        folder and the data roots. Never the IOC's working directory (`ndflow run` without a
        config uses the built-in config's own folder as its folder)."""
        return tuple(dict.fromkeys((self.base_dir, *self.data_roots)))

    def algorithm_file(self, name: str) -> Path:
        """The file `name` names, if it lies inside a configured algorithm folder (symlinks
        resolved); anything else is refused, so no config or PV can load code from elsewhere."""
        if not self.algorithm_folders:
            raise ValueError("no algorithm_folders configured; algorithm files load only "
                             "from those")
        candidates = [(folder / name).resolve() for folder in self.algorithm_folders]
        within = [p for p, f in zip(candidates, self.algorithm_folders) if p.is_relative_to(f)]
        folders = ", ".join(map(str, self.algorithm_folders))
        if not within:
            raise ValueError(f"{name!r} is outside the algorithm folders ({folders})")
        for path in within:
            if path.is_file():
                return path
        raise ValueError(f"no file {name!r} in the algorithm folders ({folders})")


def inside(path: Path, folders: Iterable[Path]) -> bool:
    """Whether resolved `path` lies in one of the (resolved) `folders`. A check only: a file a
    PV names is opened through `ndflow.safepath`, which makes the check and the open one step."""
    return any(path.is_relative_to(folder) for folder in folders)


def default_config_text() -> str:
    return resources.files("ndflow").joinpath("configs/default.yml").read_text()


#: the built-in configs' folder: the folder of `ndflow run` without a config file, so nothing
#: is ever read relative to the IOC's working directory
BUILTIN_CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def load_config(path: str | Path | None) -> tuple[IOCConfig, "LineMap"]:
    if path is None:
        return parse_config(default_config_text(), "default.yml", BUILTIN_CONFIG_DIR)
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config: {exc.strerror}") from None
    return parse_config(text, str(p))


def parse_config(text: str, name: str = "<config>",
                 base_dir: Path | None = None) -> tuple[IOCConfig, "LineMap"]:
    try:
        data = yaml.safe_load(text)
        lines = LineMap(name, yaml.compose(text), base_dir)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{name}{where}: not valid YAML: "
                          f"{getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a mapping with 'drivers' and 'plugins'")
    try:
        return IOCConfig.model_validate(data), lines
    except ValidationError as exc:
        raise lines.error_from(exc) from None


class LineMap:
    """Remembers the line of every key in a YAML document so errors can point at it."""

    def __init__(self, name: str, root: yaml.Node | None, base_dir: Path | None = None) -> None:
        self.name = name
        path = Path(name)
        #: relative paths in the config are relative to its folder (given for the built-in
        #: config; the working directory only for a config given as text, in-process)
        if base_dir is None:
            base_dir = path.resolve().parent if path.is_file() else Path.cwd()
        self.base_dir = base_dir
        self._lines: dict[tuple, int] = {}
        if root is not None:
            self._walk(root, ())

    def _walk(self, node: yaml.Node, path: tuple) -> None:
        self._lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                self._lines[path + (key.value,)] = key.start_mark.line + 1
                self._walk(value, path + (key.value,))
                self._lines[path + (key.value,)] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, path + (i,))

    def line(self, path: tuple) -> int | None:
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return self._lines.get(())

    def error(self, path: tuple, message: str) -> ConfigError:
        line = self.line(tuple(path))
        where = f" line {line}" if line else ""
        return ConfigError(f"{self.name}{where}: {dotted(path)}: {message}")

    def error_from(self, exc: ValidationError, base: tuple = ()) -> ConfigError:
        first = exc.errors()[0]
        path = base + tuple(first["loc"])
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        more = len(exc.errors()) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        return self.error(path, message + suffix)


def dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"
