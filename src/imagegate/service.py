"""One image request from parsed fields to finished images: the entry point of the pipeline.

The HTTP layer and the CLI both call `ImageService.create()`; neither knows about providers.
The stages themselves, and the context they share, are in `pipeline.py`.
"""

from __future__ import annotations

from .config import Settings
from .conversion import ConversionPool
from .fetch import ImageFetcher
from .inputs import ImageSource, InputLoader
from .limits import Limits, PolicyLookup
from .outputs import OutputImage
from .pipeline import EventListener, ImageJob, ImagesOutcome, Pipeline, PipelineEvent, RequestContext
from .router import Router
from .storage import ResultStore
from .usage import UsageSink

__all__ = [
    "EventListener",
    "ImageJob",
    "ImageService",
    "ImageSource",
    "ImagesOutcome",
    "OutputImage",
    "PipelineEvent",
]


class ImageService:
    def __init__(
        self,
        settings: Settings,
        router: Router,
        store: ResultStore,
        usage: UsageSink,
        fetcher: ImageFetcher,
        default_model: str | None = None,
        limits: Limits | None = None,
        policy_for: PolicyLookup | None = None,  # a key's policy (keys.py); None: no key is limited
    ) -> None:
        self.settings = settings
        self.router = router
        inputs = InputLoader(settings, store, fetcher, ConversionPool.from_settings(settings))
        self.pipeline = Pipeline(
            settings,
            router,
            store,
            usage,
            inputs,
            default_model or next(iter(router.catalog)).id,
            limits=limits,
            policy_for=policy_for,
        )

    async def create(self, job: ImageJob, *, on_event: EventListener | None = None) -> ImagesOutcome:
        """Serve one request within one deadline (its inputs, every upstream call, the output
        pipeline, a fallback). `on_event` and `job.on_event` see its `PipelineEvent`s."""
        listeners = [listener for listener in (job.on_event, on_event) if listener is not None]
        ctx = RequestContext(job=job, deadline=self.pipeline.dispatcher.deadline(), listeners=listeners)
        return await self.pipeline.run(ctx)

    async def check(self, job: ImageJob) -> str:
        """The cheap stages only (resolve_model, validate, plan, and admit's allow-list and rate
        limits): the 4xx a request would get, without fetching, decoding or calling anything (an
        async job is checked before its 202; its budget is reserved when it runs). Returns the model
        id as the request names it."""
        ctx = RequestContext(job=job, deadline=self.pipeline.dispatcher.deadline())
        pipeline = self.pipeline
        for stage in (pipeline.resolve_model, pipeline.validate, pipeline.plan, pipeline.check_admission):
            await stage(ctx)
        return ctx.model_id
