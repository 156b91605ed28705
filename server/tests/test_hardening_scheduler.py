"""The scheduler never hangs or drops work: a failing task is answered alone (500), and
cancelling queued tasks costs O(1) each. Faults are injected into the real scheduler."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from kubellama_server.engine.params import SlotParams
from kubellama_server.engine.task import Task, TaskSink

TIMEOUT = 30


def complete(srv, prompt, **kw):
    body = {"prompt": prompt, "n_predict": 4, "temperature": 0, **kw}
    return httpx.post(srv.url + "/completion", json=body, timeout=TIMEOUT)


def hold_slot(srv, n_predict=48):
    """Start a streamed request that keeps the only slot busy; returns (thread, started, result)."""
    started, result = threading.Event(), {}

    def run():
        body = {"prompt": "Once", "n_predict": n_predict, "ignore_eos": True, "temperature": 0, "stream": True}
        tokens = 0
        with httpx.stream("POST", srv.url + "/completion", json=body, timeout=TIMEOUT) as r:
            result["status"] = r.status_code
            for line in r.iter_lines():
                if line.startswith("data: "):
                    tokens += len(json.loads(line[6:]).get("tokens", []))
                    started.set()
        result["tokens"] = tokens

    t = threading.Thread(target=run)
    t.start()
    assert started.wait(TIMEOUT)
    return t, result


def wait_queued(srv, n):
    deadline = time.monotonic() + TIMEOUT
    sched = srv.engine.scheduler
    while len(sched.waiting) + sched.commands.qsize() < n:
        assert time.monotonic() < deadline, "tasks never queued"
        time.sleep(0.01)


def test_exception_while_launching_answers_that_task_only(live_server):
    srv = live_server("-np", "1", "-c", "256")
    sched = srv.engine.scheduler
    launch = sched.launcher.launch

    def faulty(slot, task):
        if task.prompt == "BOOM":
            raise RuntimeError("injected fault")
        return launch(slot, task)

    sched.launcher.launch = faulty
    holder, held = hold_slot(srv, n_predict=200)
    gate = threading.Event()
    srv.engine.call(lambda s: gate.wait(TIMEOUT))  # the three arrive together, while the slot is busy
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(complete, srv, "first")  # taken from the queue before BOOM in the same pass
        wait_queued(srv, 1)
        boom = pool.submit(complete, srv, "BOOM")
        wait_queued(srv, 2)
        last = pool.submit(complete, srv, "last")
        wait_queued(srv, 3)
        gate.set()
        r = boom.result(TIMEOUT)
        assert r.status_code == 500, r.text
        assert r.json()["error"]["type"] == "server_error" and "RuntimeError" in r.json()["error"]["message"]
        assert first.result(TIMEOUT).status_code == 200 and last.result(TIMEOUT).status_code == 200
    holder.join(TIMEOUT)
    assert held == {"status": 200, "tokens": 200}
    assert complete(srv, "after").status_code == 200


def test_exception_while_generating_fails_that_slot_only(live_server):
    srv = live_server("-np", "2", "-c", "512")
    sched = srv.engine.scheduler
    sample = sched.output.sample

    def faulty(slot, run, i, now):
        if run.task.prompt == "BOOM" and run.n_decoded >= 2:
            raise RuntimeError("injected fault")
        return sample(slot, run, i, now)

    sched.output.sample = faulty
    with ThreadPoolExecutor(2) as pool:
        other = pool.submit(complete, srv, "fine", n_predict=40, ignore_eos=True)
        boom = pool.submit(complete, srv, "BOOM", n_predict=40, ignore_eos=True)
        r = boom.result(TIMEOUT)
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error", r.text
        ok = other.result(TIMEOUT)
        assert ok.status_code == 200 and ok.json()["tokens_predicted"] == 40
    assert complete(srv, "after").status_code == 200
    assert all(not s.is_processing for s in sched.slots)


def test_cancelling_queued_tasks_is_constant_time(live_server):
    srv = live_server("-np", "1", "-c", "256")
    engine, sched = srv.engine, srv.engine.scheduler
    loop = asyncio.new_event_loop()
    gate = threading.Event()
    engine.call(lambda s: gate.wait(TIMEOUT))  # the scheduler waits while the commands pile up
    tasks = [Task(kind="completion", prompt=[1, 2, 3], params=SlotParams(), sink=TaskSink(loop)) for _ in range(20000)]
    for t in tasks:
        engine.submit(t)
    for t in reversed(tasks):  # the last queued first: a search of the queue per cancel is quadratic
        engine.cancel(t)
    t0 = time.monotonic()
    gate.set()
    engine.call(lambda s: None).result(TIMEOUT)
    assert time.monotonic() - t0 < 5  # quadratic (a list search per cancel) took minutes
    # The call above is answered while commands are drained; the cancelled tasks leave the queue
    # in the launch pass that follows (racing this thread's check, so wait for it, briefly).
    deadline = time.monotonic() + 5
    while sched.waiting and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not sched.waiting
    assert complete(srv, "after").status_code == 200
    loop.close()


def test_client_mistakes_and_tokenizing_never_wait_for_the_scheduler(live_server):
    """Prompts are tokenized and checked on the request's own worker thread: while the
    scheduler thread is busy (here: held), a bad request is still answered at once, and
    /tokenize, /detokenize and GET /slots answer too."""
    srv = live_server("-np", "1", "-c", "256")
    gate = threading.Event()
    srv.engine.call(lambda s: gate.wait(TIMEOUT))
    try:
        r = httpx.post(srv.url + "/completion", json={"prompt": [1, 10 ** 6], "n_predict": 1}, timeout=5)
        assert r.status_code == 400 and "outside the vocabulary" in r.json()["error"]["message"]
        r = httpx.post(srv.url + "/completion", json={"prompt": "word " * 400, "n_predict": 1}, timeout=5)
        assert r.status_code == 400 and r.json()["error"]["type"] == "exceed_context_size_error"
        r = httpx.post(srv.url + "/completion", json={"prompt": "a", "logit_bias": [[10 ** 6, 1.0]]}, timeout=5)
        assert r.status_code == 400 and "logit_bias" in r.json()["error"]["message"]
        tokens = httpx.post(srv.url + "/tokenize", json={"content": "Hello world"}, timeout=5).json()["tokens"]
        assert tokens and httpx.post(srv.url + "/detokenize", json={"tokens": tokens}, timeout=5).json()["content"]
        assert httpx.get(srv.url + "/slots", timeout=5).status_code == 200
        assert srv.engine.scheduler.queued() == 0  # none of them reached the scheduler
    finally:
        gate.set()
    assert complete(srv, "after").status_code == 200


def test_a_token_id_prompt_is_shown_as_text_without_detokenizing_on_the_event_loop(live_server):
    """A /completion reply shows a token-id prompt as text; a 100k-token prompt takes ~0.2 s to
    detokenize, so that happens when the task is prepared (a worker thread), never on the event
    loop that streams every other client's tokens."""
    srv = live_server("-np", "1", "-c", "256")
    model, on_loop = srv.engine.model, []
    real = model.detokenize

    def watched(tokens, *a, **kw):
        on_loop.append(threading.current_thread() is srv._thread)
        return real(tokens, *a, **kw)

    model.detokenize = watched
    try:
        tokens = httpx.post(srv.url + "/tokenize", json={"content": "Hello world again"}, timeout=5).json()["tokens"]
        text = real([model.bos] + tokens if model.bos >= 0 else tokens)
        for stream in (False, True):
            r = httpx.post(srv.url + "/completion", json={"prompt": tokens, "n_predict": 2, "stream": stream}, timeout=30)
            assert r.status_code == 200
            final = json.loads(r.text.strip().splitlines()[-1][6:]) if stream else r.json()
            assert final["prompt"] == text and final["stop"] is True
        assert on_loop and not any(on_loop)  # detokenized, and never on the event loop
    finally:
        model.detokenize = real
