"""What a scan of one file produces: sites (where a tag reaches a pool API) and the result."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..apis import EVIDENCE_OF_KIND, POOL_APIS
from ..tags import tag_to_str


@dataclass(frozen=True)
class Site:
    """One place in a binary where a tag reaches a pool API.

    `rva` is the call (or tail-jump) instruction; for wrapper evidence it is the caller's call to
    the wrapper and `via` lists the wrapper functions from the caller towards the API.
    `tag` is None when the call was found but its tag value could not be proven.
    """

    rva: int
    api: str
    tag: int | None
    evidence: str
    protected: bool = False
    pool: int | None = None
    size: int | None = None
    via: tuple[int, ...] = ()
    function: int | None = None
    # Run-time values that may take the tag's place on some path (see runtime_text), or for an
    # unproven tag the values it comes from: "global:0x24004" (writable image memory at that
    # RVA), "field:1:0x10" (a field of a caller's structure), "unknown".
    runtime: tuple[str, ...] = ()

    @property
    def tag_str(self) -> str | None:
        return None if self.tag is None else tag_to_str(self.tag)

    @property
    def pool_is_flags(self) -> bool:
        return POOL_APIS[self.api].pool_is_flags


def evidence_for(api: str, via: tuple[int, ...], callback: bool = False) -> str:
    """Evidence name for a site reaching `api`, directly or through wrappers (callback: a link
    of the chain is an indirect call matched by its shape)."""
    if callback:
        return "callback"
    kind = POOL_APIS[api].kind
    if kind == "alloc" and via:
        return "wrapper"
    return EVIDENCE_OF_KIND[kind]


@dataclass
class ScanResult:
    """Everything one scan learned about one file. `error` is set when the file could not be
    scanned (not a PE, damaged, unsupported machine); sites may still be partial then."""

    path: str
    arch: str | None = None
    sites: list[Site] = field(default_factory=list)
    error: str | None = None
    image_base: int = 0
    imports_pool_api: bool = False
    functions_analysed: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None
