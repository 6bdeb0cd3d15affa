"""Options shared by the commands: the prior (:class:`~lipdeploy.priors.PriorSpec`), the task, the device and
backend, image sizes.

Each bundle of options is declared once here and reaches a command as one object (``prior=PriorSpec``,
``task=TaskSpec``), so a new prior or task field is added in one place. Choices that come from a registry (tasks,
sparsity patterns, backends) are read when the option is parsed or its help shown, not when this module is imported:
a pattern registered at run time is accepted, and ``lipdeploy CMD --help`` does not import torch through this module.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..bundled import require_bundled_ticket
from ..errors import InputError
from ..fit_config import FitConfig, check_field, field_help
from ..limits import check_finite, check_seed, check_size

if TYPE_CHECKING:
    import torch

    from ..priors import PriorSpec
    from ..tasks import Task
    from ..ticket import Ticket

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

# PriorSpec field -> the flag that sets it: library messages name fields, the CLI shows them as its flags.
PRIOR_FLAGS: dict[str, str] = {
    "ticket": "--ticket",
    "weights": "--weights",
    "net": "--net",
    "upsample": "--upsample",
    "act": "--act",
    "arch": "--arch",
    "channels": "--channels",
    "dd_k": "--k",
    "dd_depth": "--depth",
}
_PRIOR_FIELDS = tuple(PRIOR_FLAGS)


class RegistryChoice(click.Choice):
    """A :class:`click.Choice` whose choices come from ``names()`` each time they are needed (parsing, help).

    Registries such as :data:`lipdeploy.patterns.PATTERNS` may grow after this module is imported (a plug-in, a test
    registering a toy pattern); a plain Choice would freeze the names at import and import the registry eagerly.
    """

    def __init__(self, names: Callable[[], Sequence[str]], case_sensitive: bool = True) -> None:
        self._names = names
        super().__init__((), case_sensitive=case_sensitive)

    @property  # type: ignore[override]
    def choices(self) -> Sequence[str]:
        return tuple(self._names())

    @choices.setter
    def choices(self, value: Sequence[str]) -> None:  # click.Choice.__init__ assigns; the registry is the source
        pass


GENERATOR_TASKS = ("cs",)
"""Tasks only a generator prior restores (``restore --generator``): compressive sensing."""


class SeedType(click.ParamType):
    """An integer seed in [0, 2**63 - 1], refused at parse time as one ``error:`` line (torch raises an overflow
    traceback for seeds beyond 64 bits, after the command has loaded its inputs)."""

    name = "integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return check_seed(value, _flag(param))
        try:
            number = int(str(value).strip())
        except ValueError:
            raise InputError(None, f"{_flag(param)} must be an integer, got {value!r}"[:200]) from None
        return check_seed(number, _flag(param))


class FiniteFloat(click.ParamType):
    """A float option that refuses NaN and +-Inf at parse time (``--input-noise nan`` would run and write junk)."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InputError(None, f"{_flag(param)} must be a number, got {value!r}"[:200]) from None
        return check_finite(number, _flag(param))


def _flag(param: click.Parameter | None) -> str:
    """The option's longest spelling (``--seed``), for messages."""
    if param is None or not getattr(param, "opts", None):
        return "value"
    return max(param.opts, key=len)


SEED = SeedType()
FINITE_FLOAT = FiniteFloat()


def _task_names() -> list[str]:
    from ..tasks import TASKS  # imports torch: read when parsing, so that importing the options stays light

    return sorted([*TASKS, *GENERATOR_TASKS])


def pattern_names() -> list[str]:
    """The sparsity patterns ``find --granularity`` accepts: those registered in :data:`lipdeploy.patterns.PATTERNS`
    when the option is parsed (a pattern registered at run time included)."""
    from ..patterns import pattern_names as registered  # imports torch: read when parsing or showing help

    return registered()


def backend_names() -> list[str]:
    """The values ``--backend`` accepts: :attr:`lipdeploy.fit.FitConfig.backend`'s ("auto", "masked", "sparse" and
    every backend registered in :data:`lipdeploy.backends.BACKENDS`, "dense" among them)."""
    from ..fit import fit_backends  # imports torch: read when parsing or showing help

    return fit_backends()


# --------------------------------------------------------------------------------------------------- the prior


def _apply(fn: Callable[..., Any], decorators: Sequence[Decorator]) -> Callable[..., Any]:
    for deco in reversed(decorators):
        fn = deco(fn)
    return fn


def _bundle(fn: Callable[..., Any], name: str, fields: Sequence[str], make: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command callback so the option values ``fields`` arrive as one keyword ``name=make(**values)``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {f: kwargs.pop(f) for f in fields}
        kwargs[name] = make(**values)
        return fn(*args, **kwargs)

    return wrapper


_NET_OPTION = click.option(
    "--net",
    type=click.Choice(["netG", "avgG"]),
    default=None,
    show_default="netG, the paper's",
    help="Which generator of a progressive-GAN checkpoint (TICKET or --weights): netG or the moving average avgG.",
)


def _prior_spec(**values: Any) -> PriorSpec:
    from ..priors import PriorSpec  # imports torch: built when the command runs, not when its help is shown

    if values.pop("example", False):
        if values.get("ticket") is not None:
            raise InputError(None, "give a ticket or --example, not both")
        values["ticket"] = require_bundled_ticket()
    channels = values.pop("channels", None)
    if channels is not None:
        try:
            parsed: tuple[int, ...] | None = tuple(int(c) for c in channels.split(","))
        except ValueError:
            raise InputError(None, f"--channels must be comma-separated integers, got {channels!r}") from None
    else:
        parsed = None
    return PriorSpec(channels=parsed, **values)


_TICKET_OVERRIDES: list[Decorator] = [
    click.option(
        "--upsample",
        type=click.Choice(["bilinear", "nearest"]),
        default=None,
        show_default="bilinear, the paper's",
        help="Upsampling mode.",
    ),
    click.option(
        "--act",
        type=click.Choice(["LeakyReLU", "ReLU", "none"]),
        default=None,
        show_default="LeakyReLU, the paper's",
        help="Activation of a DIP network.",
    ),
]


def prior_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--ticket T [--weights W]`` or a dense ``--arch dip [--channels]`` / ``--arch dd [--k --depth]``, passed to
    the command as ``prior: PriorSpec``."""
    decorators = [
        click.option(
            "--ticket", type=click.Path(path_type=Path, readable=False), default=None, help="Ticket file (any format)."
        ),
        click.option(
            "--example",
            is_flag=True,
            help="Use the bundled example ticket (lipdeploy.bundled.bundled_ticket_path()) as --ticket.",
        ),
        click.option(
            "--weights",
            type=click.Path(dir_okay=False, path_type=Path, readable=False),
            default=None,
            help="Initial weights for a mask-only ticket (the paper's mask + init pair).",
        ),
        _NET_OPTION,
        *_TICKET_OVERRIDES,
        click.option(
            "--arch",
            type=click.Choice(["dip", "dd"]),
            default=None,
            show_default="dip",
            help="Dense prior when no ticket: dip (the paper's skip net) or dd (deep decoder).",
        ),
        click.option(
            "--channels",
            type=str,
            default=None,
            show_default="128,128,128,128,128, the paper's",
            help="dip: channels per level, comma-separated (skip channels stay 4).",
        ),
        click.option("--k", "dd_k", type=int, default=None, show_default="128", help="dd: channels."),
        click.option(
            "--depth", "dd_depth", type=int, default=None, show_default="5", help="dd: number of upsampling blocks."
        ),
    ]
    return _apply(_bundle(fn, "prior", (*_PRIOR_FIELDS, "example"), _prior_spec), decorators)


def ticket_options(required: bool = True) -> Decorator:
    """A ``TICKET`` argument or ``--example`` (the bundled ticket), with ``--weights`` (for mask-only files) and the
    overrides shapes cannot tell, passed to the command as ``prior: PriorSpec``.

    ``required``: one of TICKET / ``--example`` must be given; otherwise ``prior.ticket`` is ``None`` when neither is.
    """

    def check(**values: Any) -> PriorSpec:
        if required and values.get("ticket") is None and not values.get("example"):
            raise click.UsageError("give a TICKET file or --example (the bundled example ticket)")
        return _prior_spec(**values)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        decorators = [
            click.argument("ticket", type=click.Path(path_type=Path, readable=False), required=False),
            click.option("--example", is_flag=True, help="Use the bundled example ticket as TICKET."),
            click.option(
                "--weights",
                type=click.Path(dir_okay=False, path_type=Path, readable=False),
                default=None,
                help="State dict with the network's initial weights (needed for mask-only files such as the paper's).",
            ),
            _NET_OPTION,
            *_TICKET_OVERRIDES,
        ]
        fields = ("ticket", "example", "weights", "net", "upsample", "act")
        return _apply(_bundle(fn, "prior", fields, check), decorators)

    return decorate


def make_prior(prior: PriorSpec, seed: int) -> tuple[Ticket, str]:
    """:func:`lipdeploy.priors.make_prior` with messages that name this command line's flags."""
    from ..priors import make_prior as _make_prior  # imports torch: only when a command runs

    return _make_prior(prior, seed, names=PRIOR_FLAGS)


def open_ticket(prior: PriorSpec, arch_factory: str | None = None) -> Ticket:
    """The ticket file a :func:`ticket_options` command was given (with :func:`arch_factory_option`: a state dict of
    the network the user's factory builds)."""
    if arch_factory is not None:
        if prior.ticket is None:
            raise click.UsageError("--arch-factory needs a TICKET file (a state dict of the factory's network)")
        from ..factory import factory_ticket  # imports torch and the user's module: only when a command runs

        return factory_ticket(prior.ticket, arch_factory, prior.weights)
    from ..priors import open_ticket as _open_ticket  # imports torch: only when a command runs

    return _open_ticket(prior)


def arch_factory_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--arch-factory MODULE:CALLABLE`` (passed as ``arch_factory``): the network of TICKET comes from the user's
    code, imported by name (never unpickled)."""
    return click.option(
        "--arch-factory",
        "arch_factory",
        default=None,
        metavar="MODULE:CALLABLE",
        help="Build the network with this function of your code (imported by name, called with no arguments; the "
        "current directory is searched first); TICKET is then its state dict (exact zeros = mask, or "
        "torch.nn.utils.prune's layout, or a mask-only file with --weights).",
    )(fn)


# --------------------------------------------------------------------------------------------------- the task


@dataclass(frozen=True)
class TaskSpec:
    """The inverse problem as given on the command line: ``--task`` and its parameters (``sigma`` on the 0-255
    scale, ``factor`` as typed) plus an inpainting mask file."""

    name: str
    sigma: float | None = None
    drop: float | None = None
    mask_path: Path | None = None
    factor: str = "4"

    def load_mask(self, like: torch.Tensor) -> torch.Tensor | None:
        """The ``--mask`` image sized like ``like``, or ``None`` without one (only inpainting takes a mask)."""
        if self.mask_path is None:
            return None
        if self.name != "inpaint":
            raise InputError(self.mask_path, "--mask is for --task inpaint")
        from ..images import load_mask  # imports torch: only when a command runs

        return load_mask(self.mask_path, like=like)

    def build(self, mask: torch.Tensor | None = None) -> Task:
        """The :class:`~lipdeploy.tasks.Task` (checked; ``sigma`` rescaled to 0-1), with ``mask`` for inpainting."""
        from ..tasks import make_task  # imports torch: only when a command runs

        if self.sigma is not None and not 0 <= self.sigma <= 255:
            raise InputError(None, f"--sigma is on the 0-255 scale, got {self.sigma}")
        if self.drop is not None and not 0 <= self.drop < 1:
            raise InputError(None, f"--drop must be in [0, 1), got {self.drop}")
        task = make_task(
            self.name,
            sigma=None if self.sigma is None else self.sigma / 255.0,
            drop=self.drop,
            factor=int(self.factor),
            mask=mask,
        )
        if mask is not None and self.mask_path is not None:
            task.mask_name = self.mask_path.name
        return task


def _task_spec(**values: Any) -> TaskSpec:
    return TaskSpec(
        name=values["task_name"],
        sigma=values["sigma"],
        drop=values["drop"],
        mask_path=values["mask_path"],
        factor=values["factor"],
    )


def task_options(fn: Callable[..., Any], required: bool = True) -> Callable[..., Any]:
    """``--task`` and its parameters, passed to the command as ``task_spec: TaskSpec`` (``name`` None when
    ``required`` is False and no --task was given)."""
    decorators = [
        click.option(
            "--task",
            "task_name",
            type=RegistryChoice(_task_names),
            required=required,
            help="The inverse problem: denoise, inpaint or sr (super-resolution); cs (compressive sensing) and inpaint "
            "with --generator.",
        ),
        click.option(
            "--sigma",
            type=FINITE_FLOAT,
            default=None,
            show_default="25",
            help="denoise: noise sigma on the 0-255 scale.",
        ),
        click.option(
            "--drop", type=FINITE_FLOAT, default=None, show_default="0.5", help="inpaint: fraction of pixels dropped."
        ),
        click.option(
            "--mask",
            "mask_path",
            type=click.Path(path_type=Path),
            default=None,
            help="inpaint: mask image, white = known pixel, black = missing.",
        ),
        click.option(
            "--factor", type=click.Choice(["4", "8"]), default="4", show_default=True, help="sr: scale factor."
        ),
    ]
    fields = ("task_name", "sigma", "drop", "mask_path", "factor")
    return _apply(_bundle(fn, "task_spec", fields, _task_spec), decorators)


def optional_task_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """:func:`task_options` with ``--task`` optional, for a command where another option makes it unnecessary
    (``find --generator`` trains a GAN: no task); the command checks it."""
    return task_options(fn, required=False)


# --------------------------------------------------------------------------------------------------- device, sizes


def device_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--device``, checked (CUDA present) before the command runs."""

    command = fn

    @functools.wraps(command)
    def checked(*args: Any, **kwargs: Any) -> Any:
        check_device(kwargs["device"])
        return command(*args, **kwargs)

    return click.option(
        "--device",
        type=click.Choice(["cpu", "cuda"]),
        default="cpu",
        show_default=True,
        help=field_help(FitConfig, "device"),
    )(checked)


def device_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--device`` and ``--backend`` (how fitting runs the network), checked together before the command runs."""

    command = fn

    @functools.wraps(command)
    def checked(*args: Any, **kwargs: Any) -> Any:
        check_backend(kwargs["device"], kwargs["backend"])
        return command(*args, **kwargs)

    fn = click.option(
        "--backend",
        type=RegistryChoice(backend_names),
        default="auto",
        show_default=True,
        help=field_help(FitConfig, "backend"),
    )(checked)
    return device_option(fn)


def check_device(device: str) -> None:
    """Refuse ``--device cuda`` without CUDA."""
    import torch  # imports torch: only when a command runs

    if device == "cuda" and not torch.cuda.is_available():
        raise InputError(None, "--device cuda: no CUDA device is available here (use --device cpu)")


def check_backend(device: str, backend: str) -> None:
    """A ``--backend`` that cannot run on ``--device`` (the Triton kernels on CPU without Triton's interpreter) is
    refused, asking the backend itself about a small probe layer (``--device`` itself is checked first)."""
    import torch  # imports torch: only when a command runs

    from ..backends import BACKENDS  # the kernels and backends: loaded to run, not for --help

    if backend not in BACKENDS:
        return  # auto, masked, sparse: every layer runs somewhere on any device
    # loaded to run, not for --help
    from ..compaction import compact
    from ..testing import random_mask_ticket, tiny_skip

    layer = next(iter(compact(random_mask_ticket(tiny_skip(), 0.5, seed=0)).convs.values()))
    if not BACKENDS[backend].supports(layer, torch.device(device)):
        raise InputError(
            None,
            f"--backend {backend} cannot run on --device {device} (the Triton kernels need CUDA, or TRITON_INTERPRET=1 "
            "on CPU for testing); use --device cuda or --backend auto",
        )


def say(msg: str) -> None:
    """A progress or diagnostic line, on stderr so that stdout holds only results."""
    click.echo(msg, err=True)


def parse_size(text: str, multiple: int = 1) -> tuple[int, int]:
    """Parse ``HxW`` (or a single ``N`` for a square), requiring positive multiples of ``multiple``."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        raise InputError(None, f"size {text!r} is not HxW (e.g. 256x256)") from None
    if len(parts) > 2 or h <= 0 or w <= 0:
        raise InputError(None, f"size {text!r} is not HxW with positive sides")
    if h % multiple or w % multiple:
        raise InputError(None, f"size {text!r}: height and width must be multiples of {multiple}")
    return h, w


def check_image_size(path: str | Path, img: torch.Tensor, multiple: int) -> None:
    """Refuse an image (cropped to ``multiple``) too small for the network: each side at least ``multiple``."""
    if img.shape[2] < 1 or img.shape[3] < 1 or img.shape[2] < multiple or img.shape[3] < multiple:
        raise InputError(path, f"image is too small: sides must be at least {multiple} pixels after cropping")


# --------------------------------------------------------------------------------------------------- shared flags
# One spelling per meaning across the commands: -q/--quiet, -o/--output, --json, --force; `examples` ends each --help.


def quiet_option(fn: Callable[..., Any] | None = None, *, help: str | None = None) -> Any:
    """``-q/--quiet``: no progress bars or timing estimates (notices, warnings, errors and results still print);
    ``help`` says what else a command leaves out. Usable bare (``@quiet_option``) or called."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        text = help or "No progress bars or timing estimates (notices, warnings and results still print)."
        return click.option("-q", "--quiet", is_flag=True, help=text)(f)

    return decorate(fn) if fn is not None else decorate


def json_option(what: str) -> Decorator:
    """``--json``: print ``what`` as JSON on stdout instead of the human-readable text."""
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON on stdout.")


def force_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--force``: overwrite existing outputs (refused without it)."""
    return click.option("--force", is_flag=True, help="Overwrite existing outputs.")(fn)


def examples(*lines: str) -> str:
    """A click ``epilog`` listing example command lines, kept verbatim (``\\b``) at the end of ``--help``."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


class Reporter:
    """Where a command's notices go: stderr (stdout keeps only results, pure JSON under ``--json``), or nowhere when
    ``silent`` (a command whose ``--quiet`` also drops notices)."""

    def __init__(self, silent: bool = False) -> None:
        self.silent = silent

    def __call__(self, msg: str) -> None:
        if not self.silent:
            say(msg)


# --------------------------------------------------------------------------------------------------- image size


def image_size_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--crop HxW`` and ``--resize HxW|F``: shrink the input image before fitting (fits cost ~ pixels), passed to the
    command as ``crop`` and ``resize`` (strings, parsed by :func:`shrink_image`)."""
    fn = click.option(
        "--resize",
        default=None,
        metavar="HxW|F",
        help="Resize IMAGE (after --crop) to HxW, or by a factor F such as 0.25 (area averaging).",
    )(fn)
    return click.option(
        "--crop",
        default=None,
        metavar="HxW",
        help="Fit only the centre HxW crop of IMAGE (e.g. 128x128: minutes on a laptop CPU).",
    )(fn)


def parse_resize(text: str, height: int, width: int) -> tuple[int, int]:
    """``HxW`` or a factor ``F`` (0 < F) applied to ``height x width`` -> the target size."""
    if "x" not in text.lower() and "*" not in text:
        try:
            factor = float(text)
        except ValueError:
            raise InputError(None, f"--resize {text!r} is neither HxW nor a factor") from None
        if not 0 < factor <= 16:
            raise InputError(None, f"--resize factor must be in (0, 16], got {text}")
        return check_size(max(1, round(height * factor)), max(1, round(width * factor)), "--resize")
    return check_size(*parse_size(text), "--resize")


def shrink_image(
    image: str | Path, img: torch.Tensor, crop: str | None, resize: str | None
) -> tuple[torch.Tensor, tuple[int, int] | None, str | None]:
    """Apply ``--crop`` then ``--resize`` to ``img``; returns the image, the crop's (top, left) in the original (None
    without a crop) and a message for the log (None when nothing changed)."""
    from ..images import centre_crop, resize_image  # imports torch: only when a command runs

    h, w = img.shape[2], img.shape[3]
    box = None
    msgs = []
    if crop:
        ch, cw = parse_size(crop)
        if ch > h or cw > w:
            raise InputError(image, f"image is {w}x{h}, smaller than --crop {cw}x{ch} (HxW)")
        img, box = centre_crop(img, ch, cw)
        msgs.append(f"cropped the centre {cw}x{ch} of {w}x{h}")
        h, w = ch, cw
    if resize:
        rh, rw = parse_resize(resize, h, w)
        if (rh, rw) != (h, w):
            img = resize_image(img, rh, rw)
            msgs.append(f"resized {w}x{h} to {rw}x{rh}")
    return img, box, ("; ".join(msgs) or None)


# --------------------------------------------------------------------------------------------------- fitting


def setting_options(config: type, *names: str, **overrides: dict[str, Any]) -> Decorator:
    """Click options for the fields ``names`` of the settings dataclass ``config`` (e.g.
    :class:`lipdeploy.fit_config.FitConfig`): each option's flag, type, default, help and check are the field's
    (:mod:`lipdeploy.fit_config`), so that they are declared once for every command.

    The command receives each value under the field's name. ``overrides[name]`` replaces metadata keys for one
    command: its ``help`` in the command's words, another ``flag`` (and ``dest``, the parameter's name),
    ``unset=True`` (default None: "the default of the config the command builds", e.g. restore's --iters, the DIP's
    or the generator's) with a ``show_default`` text saying what that is. A value is checked as it is parsed: one
    ``error:`` line naming the flag.
    """
    hints = typing.get_type_hints(config)
    fields = {f.name: f for f in dataclasses.fields(config)}
    options = [_setting_option(fields[name], hints[name], overrides.get(name, {})) for name in names]
    return lambda fn: _apply(fn, options)


_PARAM_TYPES: dict[type, click.ParamType] = {int: click.INT, float: FINITE_FLOAT, str: click.STRING, bool: click.BOOL}


def _setting_option(field: dataclasses.Field, hint: Any, override: dict[str, Any]) -> Decorator:
    meta = {**field.metadata, **override}
    flag = meta.get("flag", "--" + field.name.replace("_", "-"))
    default = None if meta.get("unset") else meta.get("cli_default", field.default)
    kind = next(t for t in (typing.get_args(hint) or (hint,)) if t is not type(None))  # float | None -> float
    param_type = click.Choice(list(meta["choices"])) if "choices" in meta else _PARAM_TYPES[kind]

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        return value if value is None else check_field(field, value, flag)

    return click.option(
        flag,
        meta.get("dest", field.name),
        type=param_type,
        default=default,
        show_default=meta.get("show_default", default is not None),
        help=meta["help"],
        callback=check,
    )


def estimate_fit(
    ticket: Ticket, height: int, width: int, device: str, backend: str, seed: int = 0, steps: int = 2
) -> float:
    """Seconds per fitting step of ``ticket`` at output ``height x width``, measured on ``steps`` steps after one
    warm-up (a short :func:`lipdeploy.fit.fit` on a blank image): the basis of the time printed before a long fit."""
    # the fitting engine (torch and the whole library): loaded to run, not for --help
    import torch

    from ..fit import fit  # the fitting engine: loaded to run, not for --help
    from ..tasks import Observation  # imports torch: only when a command runs

    blank = torch.zeros(1, 3, height, width)
    obs = Observation(task="denoise", image=blank, out_size=(height, width), params={})
    config = FitConfig(iters=steps + 1, seed=seed, device=device, backend=backend, backtrack_db=0, log_every=10**9)
    result = fit(ticket, obs, config)
    times = result.step_times[1:]
    return sum(times) / len(times)


def format_duration(seconds: float) -> str:
    """``seconds`` as a short human duration (``45 s``, ``12 min``, ``3.4 h``)."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
