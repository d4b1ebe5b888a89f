"""Wiring of a live run: sources -> windows -> session, plus status, questions and MQTT, in one TaskGroup.

Used by ``omnizip stream``, ``omnizip demo``, ``omnizip serve-mqtt`` and the webcam assistant. The run
ends when the source ends (file, ``--duration``) and every scripted question is answered, or when the
user quits the interactive prompt (live from the first window); SIGTERM stops it gracefully, Ctrl-C
cancels it. Nothing here does model or compression work.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from omnizip_stream.config import StreamConfig
from omnizip_stream.console import Console, read_lines, status_line
from omnizip_stream.query.base import Answer, QueryError
from omnizip_stream.runctl import Terminate as _Terminate
from omnizip_stream.runctl import first_of as _first_of
from omnizip_stream.server.config import ServerConfig, ServerSettings, StreamSpec
from omnizip_stream.server.service import StreamRun, StreamServer
from omnizip_stream.session import StreamSession

logger = logging.getLogger(__name__)

# A run of one stream is a stream server with one stream whose source failure ends the run (no retry).
ONE_STREAM = ServerSettings(max_source_retries=0)


@dataclass
class MqttOptions:
    """MQTT serving of a run: ``broker`` None starts an embedded broker."""

    stream_id: str = "demo"
    broker: str | None = None
    broker_port: int | None = None  # of the embedded broker (None: a free port)
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    reply_prefix: str | None = None  # replies only to topics under it (MqttConfig.reply_prefix)
    client_id: str | None = None  # None: omnizip-<stream_id>-<random>
    rate_limit_per_s: float | None = None  # None: MqttConfig's default
    rate_limit_burst: int | None = None
    demo_question: str | None = None  # asked once through a real MQTT client (the demo)


@dataclass
class RunOptions:
    """What to run besides the session itself."""

    source: str = "synthetic"
    mic: str | None = None
    camera_size: str | None = None
    duration_s: float | None = None
    realtime: bool = True
    loop: bool = False
    max_side: int | None = 640
    questions: list[str] = field(default_factory=list)
    ask_every_s: float = 5.0
    interactive: bool = False
    status_interval_s: float = 2.0
    mqtt: MqttOptions | None = None
    watches: list[Any] = field(default_factory=list)  # WatchSpec: standing questions (``--watch``)


@dataclass
class RunResult:
    """What a run produced."""

    answers: list[tuple[str, Answer]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    source_counters: dict[str, int] = field(default_factory=dict)
    mqtt_answer: dict[str, Any] | None = None
    terminated: bool = False  # stopped by SIGTERM (or SIGHUP)


async def ask_and_print(session: StreamSession, console: Console, question: str, via: str = "") -> Answer | None:
    """Ask with the answer streamed to the console; errors are printed, not raised."""
    console.question(question, via)
    first = True
    stream = session.ask_stream(question)
    try:
        async for piece in stream:
            console.answer_piece(piece, first)
            first = False
    except QueryError as exc:
        console.note(f"   [{exc.code}] {exc.message}")
        return None
    answer = stream.answer
    assert answer is not None
    console.answer_done(answer, streamed=not first)
    return answer


async def run_stream(config: StreamConfig, options: RunOptions, console: Console | None = None) -> RunResult:
    """Run the live pipeline until the source ends and the questions are answered (or the user quits).

    The interactive prompt is live from the start: typed questions are answered while windows keep
    being ingested. SIGTERM stops the run gracefully (every context is exited: the MQTT server
    goes offline, an embedded broker is stopped) and it returns with the summary printed; Ctrl-C
    cancels it (``KeyboardInterrupt`` out of ``asyncio.run``).

    Raises:
        SourceError: the source cannot be opened (missing device, bad file, URL not answering).
        ModelLoadError: the model cannot be loaded.
        BrokerUnavailableError / BrokerRefusedError / ValueError: MQTT cannot be served as asked.
    """
    import os

    from omnizip_stream.sources import MediaError, parse_spec
    from omnizip_stream.sources.devices import check_devices

    # A bad spec, a missing file or device fails before the (possibly slow) model load.
    spec = parse_spec(options.source)
    if spec.kind == "file" and spec.target is not None and not os.path.exists(spec.target):  # noqa: ASYNC240
        raise MediaError(f"{spec.target}: no such file")
    check_devices(spec.kind, camera_device=spec.target, mic_device=options.mic)
    console = console or Console()
    result = RunResult()
    terminate = _Terminate()
    terminate.install()
    mqtt_failed: list[BaseException] = []  # the MQTT server stopped for good: the run ends and raises it
    try:
        async with contextlib.AsyncExitStack() as stack:
            server = await stack.enter_async_context(StreamServer(ServerConfig(config, ONE_STREAM)))
            stream_id = options.mqtt.stream_id if options.mqtt is not None else "default"
            session = await server.add(StreamSpec(
                stream_id, options.source, config, loop=options.loop, realtime=options.realtime,
                max_side=options.max_side, mic=options.mic, camera_size=options.camera_size,
                duration_s=options.duration_s, watches=tuple(options.watches)), wait_open=True)
            if options.watches:  # alerts are printed (and logged, and published when MQTT is on)
                from omnizip_stream.watch.setup import format_alert

                session.watches.listeners.append(lambda alert: console.note(format_alert(alert)))
            run = server.stream(stream_id)
            mqtt_config = None
            if options.mqtt is not None:
                def mqtt_dead(exc: BaseException) -> None:
                    mqtt_failed.append(exc)
                    terminate.stop.set()

                mqtt_config = await _start_mqtt(stack, options.mqtt, session, console, on_dead=mqtt_dead,
                                                watches=bool(options.watches))
            try:
                terminate.serving = True
                await _serve(session, run, options, console, result, mqtt_config, terminate.stop)
            finally:
                result.stats = session.stats()
                result.source_counters = run.counters.snapshot() if run.counters is not None else {}
    except asyncio.CancelledError:
        if not terminate.cancelled_by_signal():
            raise  # Ctrl-C, or a cancellation from outside
        # SIGTERM/SIGHUP while the model was loading (or a second one): stopped, the contexts are exited.
    finally:
        terminate.remove()
        console.close()
    if mqtt_failed:  # never serve on silently without the transport the user asked for
        raise mqtt_failed[0]
    with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
        if terminate.received:
            result.terminated = True
            console.note(f"stopped ({terminate.received})")
        if result.stats:
            console.summary(result.stats)
    return result


async def _serve(session: StreamSession, run: StreamRun, options: RunOptions, console: Console, result: RunResult,
                 mqtt_config: Any, stop: asyncio.Event) -> None:
    """Ingest the windows, show the status, ask the scripted questions and answer typed ones, concurrently.

    Returns when the source has ended and the scripted questions are answered (an interactive run:
    when the user quits; ``serve-mqtt`` on a source without an end: never), or at once on ``stop``.
    """
    source_done = asyncio.Event()
    terminal = asyncio.Lock()  # one question and answer at a time on the terminal

    async def ask(question: str) -> None:
        async with terminal:
            answer = await ask_and_print(session, console, question)
        if answer is not None:
            result.answers.append((question, answer))

    async def pump() -> None:
        try:
            await run.wait()  # the server's feed of the stream: every window ingested, or the source's error
        finally:
            source_done.set()

    async def status() -> None:
        last = ""
        while True:
            await _first_of(asyncio.sleep(options.status_interval_s), source_done.wait())
            line = status_line(session.stats())
            if line != last:
                console.status(line)
                last = line
            if source_done.is_set():
                return  # the numbers no longer change

    async def scripted() -> None:
        for i, question in enumerate(options.questions):
            await _first_of(session.wait_windows(until_s=(i + 1) * options.ask_every_s), source_done.wait())
            if source_done.is_set():
                await session.drain()
            await ask(question)

    async def prompt() -> None:
        """Typed questions; returns on quit (or Ctrl-D on a terminal). Piped input just runs out."""
        console.note("type a question and press Enter (quit, exit or Ctrl-D to stop)")
        async for line in read_lines():
            if line.strip().lower() in ("quit", "exit", "q"):
                return
            if line.strip():
                await ask(line.strip())
        if sys.stdin.isatty():
            return
        await asyncio.Event().wait()  # end of piped questions: the run ends with the source

    async def mqtt_demo() -> None:
        assert options.mqtt is not None and mqtt_config is not None
        await _first_of(session.wait_windows(count=2), source_done.wait())
        async with terminal:
            result.mqtt_answer = await _ask_over_mqtt(mqtt_config, options.mqtt, console)

    finite: list[Awaitable[Any]] = [pump(), scripted()]
    if options.mqtt is not None and options.mqtt.demo_question:
        finite.append(mqtt_demo())
    work = asyncio.ensure_future(asyncio.gather(*finite))
    stopped = asyncio.ensure_future(stop.wait())
    tasks = [work, stopped, asyncio.ensure_future(status())]
    quit_ = asyncio.ensure_future(prompt()) if options.interactive else None
    if quit_ is not None:
        tasks.append(quit_)
    try:
        ends = {work, stopped} | ({quit_} if quit_ is not None else set())
        done, _ = await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            work.result()  # a source error ends the run here
            if quit_ is not None:
                console.note("the source ended; questions are still answered (quit to stop)")
                done, _ = await asyncio.wait({quit_, stopped}, return_when=asyncio.FIRST_COMPLETED)
            elif options.mqtt is not None and options.duration_s is None and not options.questions:
                await stopped  # serve-mqtt on a source that ended: keep answering until SIGTERM / Ctrl-C
        if quit_ is not None and quit_ in done:
            quit_.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _start_mqtt(
    stack: contextlib.AsyncExitStack, opts: MqttOptions, session: StreamSession | None, console: Console,
    on_dead: Callable[[BaseException], None] | None = None, embedded: Any = None, *, streams: Any = None,
    admin_token: str | None = None, make_spec: Callable[[Any], Any] | None = None, watches: bool = False,
) -> Any:
    """Start (an embedded broker and) the MQTT query server as a background task of ``stack``.

    ``embedded``: an :class:`EmbeddedBroker` already running (``omnizip serve``: one for every stream).
    ``streams`` (``omnizip serve``): serve every stream of this ``StreamServer`` on one connection
    instead of ``session``, with run-time add/remove over ``omnizip/server/streams`` when
    ``admin_token`` is set (``make_spec`` builds a stream from a request). Alerts of standing
    questions go to ``omnizip/<id>/alerts``; ``watches``: also take registrations on ``omnizip/<id>/watch``.

    Raises:
        BrokerUnavailableError: the broker cannot be reached (at the first attempt: a user giving a
            wrong address wants to hear it at once, not after retries).
        BrokerRefusedError / StreamIdInUseError: see :meth:`MqttQueryServer.run`.
    """
    from omnizip_stream.query.broker import BrokerUnavailableError, EmbeddedBroker
    from omnizip_stream.query.mqtt import MqttConfig, MqttQueryServer

    url, protocol = opts.broker, None
    if url is None:
        broker = embedded or await stack.enter_async_context(EmbeddedBroker(opts.broker_port))  # logs where it is
        url, protocol = broker.url, ("5" if broker.supports_v5 else "3.1.1")
    # The engine caps every answer at the session's max_new_tokens (reserved in its context): so does MQTT,
    # and a reply's max_new_tokens_used is the budget the answer really had.
    # (many streams: the server file's defaults; a stream's own higher max_new_tokens is capped to them)
    if streams is None:
        stream_config = getattr(session, "config", None)
    else:
        stream_config = getattr(getattr(streams, "config", None), "defaults", None)
    budget = getattr(stream_config, "max_new_tokens", None)
    config = MqttConfig.from_url(url, stream_id=opts.stream_id if streams is None else "server",
                                 username=opts.username, password=opts.password,
                                 max_new_tokens_limit=budget, default_max_new_tokens=budget,
                                 ca_file=opts.ca_file, cert_file=opts.cert_file, key_file=opts.key_file,
                                 protocol=protocol, reply_prefix=opts.reply_prefix, client_id=opts.client_id,
                                 rate_limit_per_s=opts.rate_limit_per_s, rate_limit_burst=opts.rate_limit_burst)
    # A broker we just started holds no other server; and amqtt (the embedded fallback) would hand the
    # check's subscriptions to later clients (seen with amqtt 0.12): the check is for external brokers.
    if streams is None:
        server = MqttQueryServer(session, config, check_in_use=opts.broker is not None)
    else:
        server = MqttQueryServer.for_streams(streams, config, admin_token=admin_token, make_spec=make_spec or dict,
                                             check_in_use=opts.broker is not None)
    from omnizip_stream.watch.mqtt import enable_watches

    enable_watches(server, registration=watches)
    task = asyncio.ensure_future(server.run())
    stack.push_async_callback(_cancel, task)
    waiters = {asyncio.ensure_future(server.wait_connected()), asyncio.ensure_future(server.connect_failed.wait())}
    try:
        await asyncio.wait({task, *waiters}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    if task.done():
        task.result()  # raises the refusal (bad credentials, TLS, stream id in use ...)
    if not server.connected.is_set():
        raise BrokerUnavailableError(f"cannot connect to the MQTT broker at {config.url}: {server.last_error}")
    task.add_done_callback(functools.partial(_report_mqtt_end, on_dead=on_dead))  # only now: a refusal at start is the CLI's one-line error, not logged twice
    for sid in streams.ids() if streams is not None else [opts.stream_id]:
        topic = f"{config.topic_prefix}/{sid}"
        console.note(f"MQTT: questions on {topic}/query at {config.url}; status on {topic}/status")
    if streams is not None:
        control = "on" if admin_token else "off (no admin token)"
        console.note(f"MQTT: stream control on {config.topic_prefix}/server/streams ({control}), list on "
                     f"{server.list_topic}; server status (last will) on {config.status_topic}")
    return config


def _report_mqtt_end(task: asyncio.Future[Any], on_dead: Callable[[BaseException], None] | None = None) -> None:
    """Never let the MQTT server end silently while the stream goes on: log it and end the run."""
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        assert exc is not None
        logger.error("MQTT query server stopped: %s", str(exc).splitlines()[0])
        if on_dead is not None:
            on_dead(exc)


async def _ask_over_mqtt(config: Any, opts: MqttOptions, console: Console) -> dict[str, Any] | None:
    """Ask the demo question through a real MQTT client, as an IoT device would."""
    import dataclasses

    from omnizip_stream.query.mqtt_client import MqttQueryClient

    client_config = dataclasses.replace(config, client_id=f"demo-device-{opts.stream_id}")
    assert opts.demo_question is not None
    console.question(opts.demo_question, via=f"MQTT {config.query_topic}")
    try:
        async with MqttQueryClient(client_config) as client:
            reply = await client.ask(opts.demo_question, timeout_s=120)
    except (QueryError, TimeoutError, ConnectionError) as exc:
        console.note(f"   MQTT query failed: {exc}")
        return None
    spans = {key: _tuple(reply.get(key)) for key in ("sink_window_range", "sink_time_range_s",
                                                     "recent_window_range", "recent_time_range_s")}
    console.answer_done(Answer(reply.get("answer", ""), reply.get("ttft_ms", 0.0), reply.get("total_ms", 0.0),
                               _tuple(reply.get("window_range")), _tuple(reply.get("time_range_s")),
                               reply.get("tokens_generated", 0), windows_cached=reply.get("windows_cached", 0),
                               windows_evicted=reply.get("windows_evicted", 0), **spans), streamed=False)
    return reply


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


async def _cancel(task: asyncio.Future[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task

