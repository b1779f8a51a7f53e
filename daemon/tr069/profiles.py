"""Vendor profiles: which parameter paths carry a plan and an order's settings.

A profile is a TOML file (built-in ones in daemon/tr069/profiles/, extra ones
from `profiles_dir`) naming the vendor ids / OUIs it serves, its data model
(TR-181 `Device.` or TR-098 `InternetGatewayDevice.`), where the device reports
its location, and an ordered list of `[[set]]` entries whose values are
sandboxed Jinja2 templates. The TR-143 diagnostics objects are standard per data
model (TR-181 Device.IP.Diagnostics.*, TR-098 InternetGatewayDevice.*Diagnostics).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import ChainableUndefined, TemplateError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from daemon.core.identity import Location
from daemon.tr069.codec import ParameterValue

_ENV = ImmutableSandboxedEnvironment(undefined=ChainableUndefined, autoescape=False)

DIAGNOSTICS = {
    ("tr181", "download"): "Device.IP.Diagnostics.DownloadDiagnostics.",
    ("tr181", "upload"): "Device.IP.Diagnostics.UploadDiagnostics.",
    ("tr098", "download"): "InternetGatewayDevice.DownloadDiagnostics.",
    ("tr098", "upload"): "InternetGatewayDevice.UploadDiagnostics.",
}
RESULT_LEAVES = {
    "download": (
        "DiagnosticsState",
        "ROMTime",
        "BOMTime",
        "EOMTime",
        "TestBytesReceived",
        "TotalBytesReceived",
    ),
    "upload": (
        "DiagnosticsState",
        "ROMTime",
        "BOMTime",
        "EOMTime",
        "TestFileLength",
        "TotalBytesSent",
    ),
}
ROOTS = {"tr181": "Device.", "tr098": "InternetGatewayDevice."}


class ProfileError(ValueError):
    """A profile file that cannot be used (the message names the file)."""


@dataclass(frozen=True, slots=True)
class SetEntry:
    path: str
    value: Any  # compiled jinja2 Template
    xsd_type: str
    when: Any  # compiled expression or None


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    description: str
    vendor_ids: tuple[str, ...]
    ouis: tuple[str, ...]
    product_classes: tuple[str, ...]
    data_model: str
    location_paths: Mapping[str, str]
    entries: tuple[SetEntry, ...]
    source: str

    @property
    def root(self) -> str:
        return ROOTS[self.data_model]

    def render_configuration(self, context: Mapping[str, Any]) -> tuple[ParameterValue, ...]:
        """The configure step's SetParameterValues list for this plan/order."""
        out: list[ParameterValue] = []
        for entry in self.entries:
            try:
                if entry.when is not None and not entry.when(**context):
                    continue
                value = entry.value.render(**context).strip()
            except (TemplateError, ArithmeticError, TypeError, ValueError) as exc:
                # jinja2's SecurityError is a TemplateError: name the profile and entry
                raise ProfileError(f"{self.source}: {entry.path}: {exc}") from None
            if value in ("", "None"):
                continue
            out.append(ParameterValue(entry.path, value, entry.xsd_type))
        return tuple(out)

    def diagnostics_request(
        self, direction: str, url: str, test_bytes: int
    ) -> tuple[ParameterValue, ...]:
        prefix = DIAGNOSTICS[(self.data_model, direction)]
        params = [ParameterValue(prefix + "DiagnosticsState", "Requested")]
        if direction == "download":
            params.append(ParameterValue(prefix + "DownloadURL", url))
        else:
            params.append(ParameterValue(prefix + "UploadURL", url))
            params.append(
                ParameterValue(prefix + "TestFileLength", str(test_bytes), "xsd:unsignedInt")
            )
        return tuple(params)

    def diagnostics_result_names(self, direction: str) -> tuple[str, ...]:
        prefix = DIAGNOSTICS[(self.data_model, direction)]
        return tuple(prefix + leaf for leaf in RESULT_LEAVES[direction])

    def diagnostics_values(
        self, direction: str, params: Iterable[ParameterValue]
    ) -> dict[str, str]:
        prefix = DIAGNOSTICS[(self.data_model, direction)]
        return {p.name[len(prefix) :]: p.value for p in params if p.name.startswith(prefix)}

    def location_from(self, params: Mapping[str, str]) -> Location:
        values = {key: params.get(path) for key, path in self.location_paths.items()}
        onu = values.get("onu_id")
        try:
            onu_id = int(onu) if onu else None
        except ValueError:
            onu_id = None
        return Location(
            olt=values.get("olt") or None,
            pon_port=values.get("pon_port") or None,
            onu_id=onu_id,
            circuit_id=values.get("circuit_id") or None,
        )


def parse_profile(text: str, source: str) -> Profile:
    try:
        data = tomllib.loads(text)
        model = data["data_model"]
        if model not in ROOTS:
            raise ProfileError(f"{source}: data_model must be tr181 or tr098, not {model!r}")
        entries = []
        for i, raw in enumerate(data.get("set", [])):
            path = raw["path"]
            if not path.startswith(ROOTS[model]):
                raise ProfileError(f"{source}: set[{i}].path {path!r} is outside {ROOTS[model]}")
            when = raw.get("when")
            _refuse_private(str(raw["value"]), f"{source}: set[{i}].value")
            if when:
                _refuse_private("{{ " + str(when) + " }}", f"{source}: set[{i}].when")
            entries.append(
                SetEntry(
                    path=path,
                    value=_ENV.from_string(str(raw["value"])),
                    xsd_type=str(raw.get("type", "xsd:string")),
                    when=_ENV.compile_expression(when, undefined_to_none=True) if when else None,
                )
            )
        return Profile(
            name=str(data["name"]),
            description=str(data.get("description", "")),
            vendor_ids=tuple(v.upper() for v in data.get("vendor_ids", [])),
            ouis=tuple(o.upper() for o in data.get("ouis", [])),
            product_classes=tuple(data.get("product_classes", [])),
            data_model=model,
            location_paths=dict(data.get("location", {})),
            entries=tuple(entries),
            source=source,
        )
    except ProfileError:
        raise
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ProfileError(f"{source}: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # jinja2 TemplateSyntaxError and friends
        raise ProfileError(f"{source}: template error: {exc}") from None


def _refuse_private(template: str, where: str) -> None:
    """Refuse, at load time, templates reaching for `_private` or dunder attributes.

    The sandbox would render those as empty or raise at render time; a profile
    that tries is broken or hostile, so it never gets loaded.
    """
    tree = _ENV.parse(template)
    names = [n.attr for n in tree.find_all(nodes.Getattr)]
    names += [
        n.arg.value
        for n in tree.find_all(nodes.Getitem)
        if isinstance(n.arg, nodes.Const) and isinstance(n.arg.value, str)
    ]
    for name in names:
        if name.startswith("_"):
            raise ProfileError(f"{where}: access to attribute {name!r} is not allowed")
    if any(f.name == "attr" for f in tree.find_all(nodes.Filter)):
        raise ProfileError(f"{where}: the attr filter is not allowed")


class ProfileSet:
    def __init__(self, profiles: Iterable[Profile]) -> None:
        self.by_name: dict[str, Profile] = {}
        for p in profiles:
            self.by_name[p.name] = p  # later (operator) files override built-in ones

    @classmethod
    def load(cls, extra_dir: str | Path | None = None) -> ProfileSet:
        profiles = []
        builtin = resources.files("daemon.tr069") / "profiles"
        for item in sorted(builtin.iterdir(), key=lambda t: t.name):
            if item.name.endswith(".toml"):
                profiles.append(parse_profile(item.read_text("utf-8"), f"builtin:{item.name}"))
        if extra_dir:
            for path in sorted(Path(extra_dir).glob("*.toml")):
                profiles.append(parse_profile(path.read_text("utf-8"), str(path)))
        return cls(profiles)

    def select(self, vendor_id: str, oui: str, product_class: str, root: str) -> Profile:
        """Most specific first: vendor id or OUI (+ product class), then the
        generic profile of the data model the device's tree uses."""
        model = "tr098" if root.startswith("InternetGatewayDevice") else "tr181"
        best: Profile | None = None
        best_score = 0
        for p in self.by_name.values():
            if p.data_model != model:
                continue
            score = 0
            if vendor_id and vendor_id.upper() in p.vendor_ids:
                score += 2
            if oui and oui.upper() in p.ouis:
                score += 2
            if score and p.product_classes:
                score = score + 1 if product_class in p.product_classes else 0
            if score > best_score:
                best, best_score = p, score
        if best is not None:
            return best
        return self.by_name[f"generic-{model}"]
