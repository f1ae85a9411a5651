"""Typer without pydantic for the values that need no conversion.

Typer (0.2x and later) converts every non-flag value through a pydantic TypeAdapter, built on first use: a real
run, whose options are mostly unset (None) or strings, would import pydantic (about 12 MiB and 60 ms) for nothing.
Here a parameter's converter is built only when a value needs converting: None, a string for a string option, a
float for a float option without bounds and a bool for an optional flag are passed as they are (what the adapter
answers for them); anything else goes to typer's own converter, so its answers and its error messages stay typer's.

`install()` does nothing on a typer without this converter (an older one has no pydantic path), nor on a typer
newer than the ones this was tested with (TESTED_BELOW): its private parts may have changed, and typer's own path
then only costs memory.
"""

from __future__ import annotations

from typing import Optional

# Annotations whose values of that very type are answered unchanged by typer's converter.
_AS_IS = {str: str, Optional[str]: str, float: float, Optional[float]: float, Optional[bool]: bool}


TESTED_BELOW = (0, 30)


def install() -> bool:
    """Answers whether typer's converter was made lazy."""
    import typer

    try:
        version = tuple(int(x) for x in typer.__version__.split(".")[:2])
    except ValueError:
        return False
    if version >= TESTED_BELOW:
        return False
    try:
        from typer import _coercion, core
    except ImportError:
        return False
    param_cls = getattr(core, "_TyperParameter", None)
    base = getattr(_coercion, "RuntimeParam", None)
    build = getattr(_coercion, "build_runtime_param", None)
    if param_cls is None or base is None or build is None or not hasattr(param_cls, "get_runtime_param"):
        return False
    if getattr(param_cls.get_runtime_param, "lean", False):
        return True

    class LazyRuntimeParam(base):
        # RuntimeParam.coerce answers None (or () for a list) itself and calls this for any other value.
        def _coerce_value(self, value, param, ctx):
            kind = _AS_IS.get(self.annotation)
            info = self.parameter_info
            plain = info.parser is None and info.min is None and info.max is None
            if plain and kind is not None and type(value) is kind:
                return value
            real = param.__dict__.get("_lean_real")
            if real is None:
                real = param.__dict__["_lean_real"] = build(param.type_descriptor)
            return real._coerce_value(value, param=param, ctx=ctx)

    def get_runtime_param(self):
        if self._runtime_param is None:
            d = self.type_descriptor
            if d.file_annotation is not None:
                self._runtime_param = build(d)  # files are opened by typer's own converter
            else:
                self._runtime_param = LazyRuntimeParam(parameter_info=d.parameter_info, annotation=d.annotation)
        return self._runtime_param

    get_runtime_param.lean = True  # type: ignore[attr-defined]
    param_cls.get_runtime_param = get_runtime_param
    return True
