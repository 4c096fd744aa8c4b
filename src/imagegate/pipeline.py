"""One image request as a context passed through named stages (as vLLM's `ServeContext`).

    resolve_model -> validate -> plan -> admit -> load_inputs -> layout -> dispatch
                  [-> fallback: validate -> plan -> admit -> load_inputs -> layout -> dispatch]
                  -> record_usage -> finish -> host -> render

Each stage reads what earlier stages decided from the `RequestContext` and writes its own
decisions there; none recomputes another's. In order:

- resolve_model: the model the client named (an alias stays an alias in every report);
- validate: the mode and every field checked and typed against the model (400s);
- plan: the configured providers, best first, each as a `Candidate` with its own view of the
  request (router.plan_candidates; a parameter no provider honours is a 400 here);
- admit: the key's policy (limits.py): its model allow-list (403), its rate limits (429
  rate_limit_exceeded; an async job's were taken when it was submitted) and its budget: the
  request's expected cost is reserved before any upstream call (429 insufficient_quota), and
  settled with the real cost when the request ends, however it ends;
- load_inputs: images and mask read and decoded, once per request;
- layout: the output size (an edit keeps its first image's shape by default);
- dispatch: n split into calls, retried, failed over, within the request's deadline;
- record_usage: the usage row of what the upstream made (and the budget settled with its cost), as
  soon as dispatch ends: an instance that dies while converting or storing has recorded it already;
- finish: composite, convert, measure; host: result URLs or inline data; render: the
  `ImagesOutcome` the HTTP layer and the CLI turn into their answers.

When every provider of the model is at capacity and the client allows it
(`allow_fallback_model`), the request falls back: the context switches to the fallback model and
runs validate..dispatch again over the inputs already loaded (checked, not fetched or decoded again).

Adjustments (what the gateway changed or did not apply) are collected on the context with
`ctx.adjust(source, ...)`, de-duplicated, and listed in the order of `AdjustmentSource`.
Events (`PipelineEvent`) go to the request's listeners as stages start and finish and as each
image is finished, so that streaming and jobs can watch a request without a code path of their own.

The usage row is written once upstream calls made images, whatever fails after: a deadline or a
client gone during dispatch, the n-failure policy, no room to convert or store. It is written as
undelivered; whoever delivers the answer marks it (usage.UsageLog.mark_delivered: the HTTP layer once
the answer is written, server/delivery.py; the job runner once the result is stored; the CLI once
the files are written).
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal, TypeVar

from . import imaging, logs, metrics
from .catalog import Mode, ModelEntry
from .config import Settings
from .dispatch import CallPlan, Dispatcher, Served
from .errors import ImagegateError, InsufficientQuota, InvalidRequest, UpstreamAtCapacity
from .inputs import ImageSource, InputLoader, check_for_model
from .limits import RESERVATION_MARGIN_SECONDS, Limits, LocalLimitState, PolicyLookup, Reservation, model_allowed
from .normalize import Adjustment, Layout, resolve_layout
from .outputs import Delivered, Finishing, OutputImage, finish_images, finish_partial, host_all, inline_urls
from .params import NormalizedParams, normalize_params
from .policy import KeyPolicy
from .pricing import Charge, Cost, call_cost, total_cost
from .providers import InputImage, PartialListener, ProviderImage, TokenSplit
from .resilience import is_capacity, is_upstream_failure
from .router import Candidate, Router, plan_candidates
from .storage import ResultStore
from .usage import UsageRecord, UsageSink, record_after_failure, record_usage

T = TypeVar("T")
log = logging.getLogger("imagegate")


# --- events ----------------------------------------------------------------------------------

# stage_started / stage_finished name the stage; image_finished carries one finished image;
# image_partial one interim image (a streamed request's partial_images: `index` is its
# partial_image_index), converted to the requested format, sent before dispatch finishes;
# fallback (in the `fallback` stage) says the request now serves `model` instead.
EventKind = Literal["stage_started", "stage_finished", "image_partial", "image_finished", "fallback"]


@dataclass(frozen=True)
class PipelineEvent:
    kind: EventKind
    stage: str  # the stage it happened in
    request_id: str
    model: str  # the model being served at the time, as the request names it
    index: int | None = None  # image_finished: the image's place in the answer
    image: OutputImage | None = None  # image_finished: the image, converted but not yet hosted


# Called on the event loop, in order; it must not block (put the event on a queue instead).
EventListener = Callable[[PipelineEvent], None]


# --- the request and its answer ---------------------------------------------------------------


@dataclass
class ImageJob:
    mode: Mode
    params: dict[str, Any]
    images: list[ImageSource] = field(default_factory=list)
    mask: ImageSource | None = None
    request_id: str = ""  # the gateway's own, unique per request
    client_request_id: str | None = None  # the x-request-id the client sent, if any
    key_id: str | None = None
    image_param: str = "image"  # the field the images came in, for error messages ("images" in JSON)
    public_base_url: str | None = None  # base of result URLs; default from the settings
    request_base_url: str | None = None  # the base the request itself came to: its result URLs are ours too
    on_event: EventListener | None = None  # sees the request's PipelineEvents
    rate_checked: bool = False  # its key's rate limits were taken already (an async job, when submitted)


@dataclass
class ImagesOutcome:
    created: int
    model: str
    provider: str
    layout: Layout
    images: list[OutputImage]
    response_format: str
    seed: int | None
    adjustments: list[Adjustment]
    cost: float
    currency: str
    cost_estimated: bool  # the serving provider's real price is not known for some call
    input_tokens: int
    output_tokens: int
    # OpenAI's input_tokens_details / output_tokens_details, summed over the upstream calls.
    input_details: TokenSplit = TokenSplit()
    output_details: TokenSplit = TokenSplit()

    def effective(self) -> dict[str, Any]:
        first = self.images[0]
        return {
            "model": self.model,
            "provider": self.provider,
            "aspect_ratio": self.layout.aspect_ratio,
            "resolution": self.layout.resolution,
            "width": first.width,
            "height": first.height,
            "output_format": first.format,
            "response_format": self.response_format,
            "n": len(self.images),
            "seed": self.seed,
        }


# --- the context -----------------------------------------------------------------------------


class AdjustmentSource(IntEnum):
    """Where an adjustment comes from. The answer lists them in this order (and, within one
    source, in the order they were made)."""

    FALLBACK = 0  # the model served instead of the one asked for, then what the fallback lacks
    LAYOUT = 1  # size, aspect_ratio, resolution mapped onto what the model makes
    PARAMETERS = 2  # given but not applied, by the model or by the provider that served it
    COUNT = 3  # fewer (or more) images than `n`
    DIMENSIONS = 4  # the provider's pixels differ from the size table
    OUTPUT = 5  # the output conversion (compression for a lossless format)


@dataclass(kw_only=True)
class RequestContext:
    """Everything one request's stages decide. A field is filled by the stage named beside it."""

    job: ImageJob
    deadline: float  # on the event loop's clock: fetching inputs, every call, conversion, a fallback
    listeners: list[EventListener] = field(default_factory=list)
    stage: str = ""  # the stage running now
    # resolve_model (and a fallback)
    model_id: str = ""  # as the client sent it, or the fallback's id
    entry: ModelEntry | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # the request's fields, as this model takes them
    fallback_from: str | None = None  # the model asked for, once fallen back
    # validate
    normalized: NormalizedParams | None = None
    # plan
    candidates: list[Candidate] = field(default_factory=list)
    # admit
    rate_taken: bool = False  # counted against the key's rate limits (once, a fallback too)
    reservation: Reservation | None = None  # the budget held for its expected cost; settled at the end
    # load_inputs
    inputs_loaded: bool = False
    images: list[InputImage] = field(default_factory=list)
    mask: InputImage | None = None
    # layout
    planned_layout: Layout | None = None
    # dispatch
    n: int = 1
    paid: list[Served] = field(default_factory=list)  # each call that made images, as soon as it returns
    served: list[Served] | None = None  # all successful calls, in candidate order, once dispatch is done
    errors: list[ImagegateError] = field(default_factory=list)
    delivered: list[Delivered] = field(default_factory=list)  # emptied by finish as images are converted
    made: int = 0  # images the upstreams made (and billed)
    cost: Cost | None = None
    partials_sent: int = 0  # interim images passed on (at most partial_images per request)
    partial_task: asyncio.Task[None] | None = None  # the last one being converted; each waits for the one before
    # finish, host
    response_format: str = ""
    outputs: list[OutputImage] = field(default_factory=list)
    # record_usage
    usage: UsageRecord | None = None  # the row written for this request
    # render
    outcome: ImagesOutcome | None = None
    _adjustments: dict[Adjustment, AdjustmentSource] = field(default_factory=dict)

    @property
    def model(self) -> ModelEntry:
        return _done(self.entry, "resolve_model")

    @property
    def params(self) -> NormalizedParams:
        return _done(self.normalized, "validate")

    @property
    def layout(self) -> Layout:
        return _done(self.planned_layout, "layout")

    def adjust(self, source: AdjustmentSource, *adjustments: Adjustment) -> None:
        """Note what the gateway changed; one that is already noted is not repeated."""
        for adjustment in adjustments:
            self._adjustments.setdefault(adjustment, source)

    @property
    def adjustments(self) -> list[Adjustment]:
        # sorted() is stable: within a source, the order they were noted in.
        return sorted(self._adjustments, key=lambda a: self._adjustments[a])

    def emit(self, kind: EventKind, **details: Any) -> None:
        if not self.listeners:
            return  # the usual case: no event is built
        event = PipelineEvent(kind, self.stage, self.job.request_id, self.model_id, **details)
        for listener in self.listeners:
            listener(event)

    def switch_model(self, fallback: ModelEntry, fields: dict[str, Any], dropped: list[Adjustment]) -> None:
        """Serve `fallback` instead: every per-model decision is dropped (the inputs are kept) and
        the answer says which model it is and what it left out."""
        self.fallback_from, self.model_id, self.entry, self.fields = self.model_id, fallback.id, fallback, fields
        self.normalized, self.candidates, self.planned_layout = None, [], None
        self.paid, self.served, self.errors, self.delivered, self.made, self.cost = [], None, [], [], 0, None
        self._adjustments = {}
        self.adjust(
            AdjustmentSource.FALLBACK,
            Adjustment("model", self.fallback_from, f"{fallback.id} (allow_fallback_model)"),
            *dropped,
        )


def _done(value: T | None, stage: str) -> T:
    if value is None:
        raise AssertionError(f"the {stage} stage has not run")
    return value


# --- the stages ------------------------------------------------------------------------------

Stage = Callable[[RequestContext], Awaitable[None]]


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        router: Router,
        store: ResultStore,
        usage: UsageSink,
        inputs: InputLoader,
        default_model: str,
        limits: Limits | None = None,
        policy_for: PolicyLookup | None = None,
    ) -> None:
        self.settings = settings
        self.router = router
        self.store = store
        self.usage = usage
        self.inputs = inputs
        self.default_model = default_model
        # Without a policy lookup (a gateway without keys, most tests) no request is limited.
        self.limits = limits or Limits(LocalLimitState(), _nothing_spent)
        self.policy_for: PolicyLookup = policy_for or _no_policy
        self.dispatcher = Dispatcher(settings, router.breaker, self.limits)

    async def run(self, ctx: RequestContext) -> ImagesOutcome:
        try:
            await self._stage(ctx, "resolve_model", self.resolve_model)
            await self._serve_model(ctx)
            if self._may_fall_back(ctx):
                await self._stage(ctx, "fallback", self.fall_back)
            else:
                _check_delivery(ctx, self.settings.n_failure_policy)
            for name, stage in (
                ("record_usage", self.record_usage),
                ("finish", self.finish),
                ("host", self.host),
                ("render", self.render),
            ):
                await self._stage(ctx, name, stage)
        except BaseException:
            self._record_after_failure(ctx)
            raise
        finally:
            # However it ends (answered, failed, cancelled): what it really cost replaces what it held.
            self.limits.settle(ctx.reservation, ctx.usage.cost if ctx.usage is not None else 0.0)
        return _done(ctx.outcome, "render")

    async def _stage(self, ctx: RequestContext, name: str, stage: Stage) -> None:
        ctx.stage = name
        ctx.emit("stage_started")
        await stage(ctx)
        ctx.stage = name  # a fallback runs stages of its own inside
        ctx.emit("stage_finished")

    async def _serve_model(self, ctx: RequestContext) -> None:
        """The stages that depend on the model: run again for a fallback."""
        for name, stage in (
            ("validate", self.validate),
            ("plan", self.plan),
            ("admit", self.admit),
            ("load_inputs", self.load_inputs),
            ("layout", self.lay_out),
            ("dispatch", self.dispatch),
        ):
            await self._stage(ctx, name, stage)

    async def resolve_model(self, ctx: RequestContext) -> None:
        ctx.fields = ctx.job.params
        ctx.model_id = str(ctx.fields.get("model") or self.default_model)
        ctx.entry = self.router.model(ctx.model_id)
        logs.note_model(ctx.model_id)  # known to the catalog: a label of bounded values

    async def validate(self, ctx: RequestContext) -> None:
        mode = ctx.job.mode
        if mode not in ctx.model.modes:
            raise InvalidRequest(f"Model '{ctx.model_id}' does not support {mode} requests.", param="model")
        ctx.normalized = normalize_params(
            ctx.fields, model=ctx.model, mode=mode, strict=self.settings.strict_parameters
        )

    async def plan(self, ctx: RequestContext) -> None:
        """400s happen here, before anything is fetched or sent anywhere."""
        routes = self.router.routes(ctx.model_id, given=set(ctx.params.values))
        ctx.candidates = plan_candidates(
            ctx.params, routes, strict=self.settings.strict_parameters, has_mask=ctx.job.mask is not None
        )

    async def admit(self, ctx: RequestContext) -> None:
        """The key's policy, before anything is fetched or sent: allow-list and rate limits, then
        the budget reserved for the request's expected cost. A fallback runs it again: the model is
        checked again, the rate limits are not taken twice, and the first model's reservation (it
        paid for nothing) is released for the fallback's own."""
        policy = self.policy_for(ctx.job.key_id)
        if policy is None:
            return
        await self._admit_cheaply(ctx, policy)
        self.limits.settle(ctx.reservation, 0.0)
        ttl = max(0.0, ctx.deadline - asyncio.get_running_loop().time()) + RESERVATION_MARGIN_SECONDS
        ctx.reservation = await self.limits.reserve(policy, self._expected_cost(ctx), ttl)

    async def _admit_cheaply(self, ctx: RequestContext, policy: KeyPolicy) -> None:
        """The allow-list and the rate limits: what an async job is checked for when it is submitted."""
        self.limits.check_model(policy, ctx.model_id, ctx.model, self.router.catalog)
        if not (ctx.rate_taken or ctx.job.rate_checked):
            await self.limits.take_rate(policy, int(ctx.params.get("n", 1)))
            ctx.rate_taken = True

    async def check_admission(self, ctx: RequestContext) -> None:
        """At an async job's submission (ImageService.check): its allow-list and rate limits; the
        budget is reserved when it runs."""
        policy = self.policy_for(ctx.job.key_id)
        if policy is not None:
            await self._admit_cheaply(ctx, policy)
        ctx.job.rate_checked = True

    def _expected_cost(self, ctx: RequestContext) -> float:
        """The first candidate's price at the request's tier times n (its listed price, estimated,
        where the provider's own is not known), as dispatch would be charged. An edit's input shape is
        not known yet: its tier is what the request asks for, else the model's default."""
        if not ctx.candidates:
            return 0.0
        first, params = ctx.candidates[0], ctx.params
        try:
            layout: Layout | None = resolve_layout(
                ctx.model,
                size=params.get("size"),
                aspect_ratio=params.get("aspect_ratio"),
                resolution=params.get("resolution"),
            )
        except ImagegateError:  # the layout stage says what is wrong with it
            layout = None
        charge = Charge(
            first.route.model.binding_price(first.provider_id),
            layout.resolution if layout is not None else ctx.model.default_resolution,
            int(params.get("n", 1)),
            len(ctx.job.images),
            first.view.options,
            size=(layout.width, layout.height) if layout is not None else None,
        )
        return call_cost(charge)

    async def load_inputs(self, ctx: RequestContext) -> None:
        job = ctx.job
        if ctx.inputs_loaded:  # a fallback: the same images, checked against the new model
            check_for_model(job.mode, ctx.images, ctx.model, job.image_param)
            return
        bases = [b for b in (job.public_base_url, self.settings.base_public_url, job.request_base_url) if b]
        try:
            async with asyncio.timeout_at(ctx.deadline):
                ctx.images, ctx.mask = await self.inputs.load(
                    mode=job.mode,
                    images=job.images,
                    mask=job.mask,
                    model=ctx.model,
                    param=job.image_param,
                    key_id=job.key_id,
                    own_bases=bases,
                )
        except TimeoutError as exc:
            raise self.dispatcher.timed_out(" (while fetching its input images)") from exc
        ctx.inputs_loaded = True

    async def lay_out(self, ctx: RequestContext) -> None:
        params = ctx.params
        input_shape = (ctx.images[0].width, ctx.images[0].height) if ctx.images else None
        ctx.planned_layout = resolve_layout(
            ctx.model,
            size=params.get("size"),
            aspect_ratio=params.get("aspect_ratio"),
            resolution=params.get("resolution"),
            input_shape=input_shape,
        )
        ctx.adjust(AdjustmentSource.LAYOUT, *ctx.planned_layout.adjustments)

    async def dispatch(self, ctx: RequestContext) -> None:
        ctx.n = int(ctx.params.get("n", 1))
        plan = CallPlan(ctx.job.mode, ctx.layout, tuple(ctx.images), ctx.mask, self._partial_listener(ctx))
        try:
            served, ctx.errors = await self.dispatcher.run(ctx.candidates, plan, ctx.n, ctx.deadline, paid=ctx.paid)
            if ctx.partial_task is not None:
                await ctx.partial_task  # every partial goes out before the images it precedes
        finally:
            if ctx.partial_task is not None and not ctx.partial_task.done():
                ctx.partial_task.cancel()
        ctx.served = served
        ctx.delivered = [(item.candidate, image) for item in served for image in item.result.images]
        # Counted now: the finish stage releases the upstream's images as it converts them.
        ctx.made = len(ctx.delivered)
        ctx.cost = self._cost(served, ctx.layout, input_images=len(ctx.images))
        if ctx.delivered:
            for item in served:
                ctx.adjust(AdjustmentSource.PARAMETERS, *item.candidate.view.ignored)
            ctx.adjust(AdjustmentSource.COUNT, *_count_adjustments(ctx.n, ctx.made, len(ctx.errors)))

    def _partial_listener(self, ctx: RequestContext) -> PartialListener | None:
        """What the adapters call with each interim image, when someone listens: the first
        `partial_images` of them are converted, in arrival order, and emitted. Which providers get
        it (only in a stream, only where the binding makes partials) the plan decided already:
        params._partial_images drops partial_images from every other provider's view."""
        limit = int(ctx.params.get("partial_images", 0))
        if not limit or not ctx.listeners:
            return None

        def on_partial(image: ProviderImage) -> None:
            if ctx.partials_sent >= limit:
                return
            index, ctx.partials_sent = ctx.partials_sent, ctx.partials_sent + 1
            ctx.partial_task = asyncio.ensure_future(self._emit_partial(ctx, index, image, ctx.partial_task))

        return on_partial

    async def _emit_partial(
        self, ctx: RequestContext, index: int, image: ProviderImage, previous: asyncio.Task[None] | None
    ) -> None:
        if previous is not None:
            await previous
        params = ctx.params
        try:
            output = await finish_partial(
                self.inputs.conversions,
                image,
                params.get("output_format"),
                params.get("output_compression"),
                deadline=ctx.deadline,
            )
        except (ImagegateError, binascii.Error, OSError, SyntaxError, ValueError) as exc:
            # An interim image is a preview: a broken one is skipped, the request goes on.
            log.warning("request %s: partial image %d skipped: %s", ctx.job.request_id, index, exc)
            return
        ctx.emit("image_partial", index=index, image=output)

    def _may_fall_back(self, ctx: RequestContext) -> bool:
        """`allow_fallback_model`: only when nothing was made and every provider of the model is at capacity."""
        return (
            not ctx.delivered
            and bool(ctx.params.get("allow_fallback_model"))
            and ctx.model.fallback_model is not None
            and ctx.fallback_from is None
            and bool(ctx.errors)
            and all(is_capacity(e) for e in ctx.errors)
            and self._key_may_use(ctx, ctx.model.fallback_model)
        )

    def _key_may_use(self, ctx: RequestContext, model_id: str) -> bool:
        """A key whose allow-list lacks the fallback model is not served it (it gets the first
        model's capacity error, not a 403 for a model it did not ask for)."""
        policy = self.policy_for(ctx.job.key_id)
        return policy is None or model_allowed(policy, model_id, self.router.model(model_id), self.router.catalog)

    async def fall_back(self, ctx: RequestContext) -> None:
        """Serve the model's fallback instead, over the inputs already loaded; its failure is a 503
        that names both models."""
        model = ctx.model
        assert model.fallback_model is not None
        fallback = self.router.model(model.fallback_model)
        fields, dropped = self._fallback_fields(ctx, fallback)
        ctx.switch_model(fallback, fields, dropped)
        ctx.emit("fallback")
        try:
            await self._serve_model(ctx)
            _check_delivery(ctx, self.settings.n_failure_policy)
        except InsufficientQuota:
            raise  # the fallback's own cost is over the key's budget: that, not capacity, is the answer
        except ImagegateError as exc:
            raise UpstreamAtCapacity(
                f"Every provider of '{model.id}' is at capacity, and the fallback model "
                f"'{model.fallback_model}' failed too: {exc.message}",
                retry_after=exc.retry_after,
            ) from exc

    def _fallback_fields(self, ctx: RequestContext, fallback: ModelEntry) -> tuple[dict[str, Any], list[Adjustment]]:
        """The request as the fallback model can take it: what it lacks is left out and said so,
        instead of failing a request the caller allowed to degrade."""
        routes = self.router.routes(fallback.id)
        fields: dict[str, Any] = {"model": fallback.id}
        dropped: list[Adjustment] = []
        for name, value in ctx.fields.items():
            if name in ("model", "allow_fallback_model") or value is None:
                continue
            spec = fallback.parameters.get(name)
            honoured = (
                spec is not None
                and spec.availability(ctx.job.mode) != "not_available"
                and any(not r.binding.unavailable([name]) for r in routes)
            )
            if honoured or name == "prompt":
                fields[name] = value
            else:
                dropped.append(Adjustment(name, str(value), f"not applied (fallback model {fallback.id} lacks it)"))
        return fields, dropped

    async def finish(self, ctx: RequestContext) -> None:
        params = ctx.params
        # Left out: the operator's default, `both` unless set, so that clients reading only
        # b64_json (gpt-image style) and those reading only url (DALL-E style) both work.
        ctx.response_format = params.get("response_format", self.settings.default_response_format)
        # The upstream's images (base64 text of megabytes each) are held by `delivered` alone from
        # here, which finish_images consumes: each is freed once converted, not when all are.
        for item in _done(ctx.served, "dispatch"):
            item.result.images.clear()
        how = Finishing(
            target=params.get("output_format"),
            compression=params.get("output_compression"),
            first_input=ctx.images[0] if ctx.images else None,
            mask=ctx.mask,
            hosted=self._hosted(ctx),
            inline=ctx.response_format != "url",
        )
        ctx.outputs = await finish_images(
            self.inputs.conversions,
            ctx.delivered,
            how,
            deadline=ctx.deadline,
            on_image=lambda index, image: ctx.emit("image_finished", index=index, image=image),
        )
        ctx.adjust(AdjustmentSource.DIMENSIONS, *_dimension_adjustments(ctx.layout, ctx.outputs))
        if how.compression is not None and ctx.outputs[0].format in imaging.LOSSLESS:
            ctx.adjust(
                AdjustmentSource.OUTPUT,
                Adjustment(
                    "output_compression", str(how.compression), f"ignored ({ctx.outputs[0].format} is lossless)"
                ),
            )

    def _hosted(self, ctx: RequestContext) -> bool:
        return ctx.response_format in ("url", "both") and not ctx.params.get("sync_mode")

    async def host(self, ctx: RequestContext) -> None:
        if self._hosted(ctx):
            base = ctx.job.public_base_url or self.settings.base_public_url
            ctx.outputs = await host_all(self.store, ctx.outputs, base)
        elif ctx.response_format in ("url", "both"):  # sync_mode
            ctx.outputs = inline_urls(ctx.outputs)

    async def record_usage(self, ctx: RequestContext) -> None:
        # Set first: even if this await is cancelled, the thread still writes the row.
        ctx.usage = self._usage_record(ctx, _done(ctx.served, "dispatch"), ctx.made, _done(ctx.cost, "dispatch"))
        self.limits.settle(ctx.reservation, ctx.usage.cost)
        metrics.count_usage(ctx.usage.model, ctx.usage.provider, ctx.usage.images, ctx.usage.cost)
        await record_usage(self.usage, ctx.usage)

    async def render(self, ctx: RequestContext) -> None:
        served, cost = _done(ctx.served, "dispatch"), _done(ctx.cost, "dispatch")
        ctx.outcome = ImagesOutcome(
            created=int(time.time()),
            model=ctx.model_id,
            provider=_providers(served),
            layout=ctx.layout,
            images=ctx.outputs,
            response_format=ctx.response_format,
            seed=ctx.params.get("seed"),
            adjustments=ctx.adjustments,
            cost=cost.amount,
            currency=cost.currency,
            cost_estimated=cost.estimated,
            input_tokens=sum(item.result.input_tokens for item in served),
            output_tokens=sum(item.result.output_tokens for item in served),
            input_details=sum((item.result.input_split() for item in served), TokenSplit()),
            output_details=sum((item.result.output_split() for item in served), TokenSplit()),
        )
        logs.note_served(ctx.outcome.provider, adjustment_fields(ctx.outcome.adjustments))

    def _record_after_failure(self, ctx: RequestContext) -> None:
        """A request failing after upstream calls made images: they are paid for, so the usage row
        is written on the spot before the error leaves (see usage.record_after_failure)."""
        if ctx.usage is not None:
            return
        if ctx.served is not None:  # dispatch finished: what it counted before finish released the images
            calls, made, cost = ctx.served, ctx.made, ctx.cost
        else:  # the deadline or a client gone ended dispatch: the calls that returned so far
            calls = list(ctx.paid)
            made = sum(len(item.result.images) for item in calls)
            cost = self._cost(calls, ctx.layout, input_images=len(ctx.images)) if made else None
        if made and cost is not None:
            ctx.usage = self._usage_record(ctx, calls, made, cost)  # and the budget is settled with its cost
            metrics.count_usage(ctx.usage.model, ctx.usage.provider, ctx.usage.images, ctx.usage.cost)
            record_after_failure(self.usage, ctx.usage)

    @staticmethod
    def _cost(served: list[Served], layout: Layout, input_images: int) -> Cost:
        """Each served call at its own provider's price (failover can split a request between two),
        for what the upstream made."""
        return total_cost(
            Charge(
                item.route.model.binding_price(item.route.provider_id),
                layout.resolution,
                len(item.result.images),
                input_images,
                item.candidate.view.options,
                size=(layout.width, layout.height),
            )
            for item in served
        )

    @staticmethod
    def _usage_record(ctx: RequestContext, served: list[Served], made: int, cost: Cost) -> UsageRecord:
        """The usage row of a request whose upstream calls made images: whether it was then
        answered or failed later (one builder, so both rows carry the same fields)."""
        job, params = ctx.job, ctx.params
        return UsageRecord(
            request_id=job.request_id,
            key_id=job.key_id,
            user=params.get("user"),
            safety_identifier=params.get("safety_identifier"),
            model=ctx.model_id,
            provider=_providers(served),
            mode=job.mode,
            images=made,
            cost=cost.amount,
            cost_estimated=cost.estimated,
            client_request_id=job.client_request_id,
            input_tokens=sum(item.result.input_tokens for item in served),
            output_tokens=sum(item.result.output_tokens for item in served),
        )


def _no_policy(key_id: str | None) -> None:
    return None


async def _nothing_spent(key_id: str, since: float) -> float:
    return 0.0


def _check_delivery(ctx: RequestContext, n_failure_policy: str) -> None:
    """No image at all is the most relevant error; some calls failing is one too under the
    `fail` policy (IMAGEGATE_N_FAILURE_POLICY), and a partial answer otherwise."""
    if not ctx.delivered or (ctx.errors and n_failure_policy == "fail"):
        raise _most_relevant(ctx.errors)


def _most_relevant(errors: list[ImagegateError]) -> ImagegateError:
    """The client's own mistake beats any upstream trouble; otherwise the last provider's error."""
    if not errors:
        return ImagegateError("The upstream returned no images.")
    return next((e for e in errors if not is_upstream_failure(e)), errors[-1])


def _providers(served: list[Served]) -> str:
    return ",".join(dict.fromkeys(item.route.provider_id for item in served))


def _count_adjustments(n: int, delivered: int, failed_calls: int) -> list[Adjustment]:
    """Fewer images than asked (failed calls, a short upstream) or more (limit_generations off)."""
    if delivered == n:
        return []
    why = f"{failed_calls} upstream calls failed" if failed_calls else "as many as the upstream returned"
    return [Adjustment("n", str(n), f"{delivered} ({why})")]


def _dimension_adjustments(layout: Layout, outputs: list[OutputImage]) -> list[Adjustment]:
    """The provider decides the final pixels; say so when they differ from the size table."""
    first = outputs[0]
    if (first.width, first.height) == (layout.width, layout.height):
        return []
    return [Adjustment("size", f"{layout.width}x{layout.height}", f"{first.width}x{first.height} (as produced)")]


def adjustment_fields(adjustments: list[Adjustment]) -> list[dict[str, str]]:
    """The answer's `adjustments` (and the access line's)."""
    return [{"param": a.param, "requested": a.requested, "applied": a.applied} for a in adjustments]
