"""Images in prompts (`--mmproj`): the tiny text model with the tiny LLaVA-style projector, over real HTTP."""

from __future__ import annotations

import base64
import concurrent.futures as cf

import httpx
import pytest

from kubellama_server.llama.mtmd import ImageChunk, MediaPrompt, image_key
from kubellama_server.promtext import read_samples
from kubellama_server.testing.tiny_mmproj import build_tiny_mmproj, tiny_png

N_IMAGE = 16  # tokens per image: (32 / 8) ** 2 patches of the tiny projector


@pytest.fixture(scope="module")
def mmproj(tmp_path_factory):
    return build_tiny_mmproj(tmp_path_factory.mktemp("mmproj") / "mmproj.gguf")


@pytest.fixture
def mm_server(live_server, mmproj):
    def start(*flags: str):
        return live_server("--mmproj", str(mmproj), "-c", "1024", *flags)
    return start


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


RED, BLUE = tiny_png(20, 12, seed=1), tiny_png(20, 12, seed=2)


def complete(url: str, **body) -> dict:
    r = httpx.post(url + "/completion", json={"temperature": 0, "n_predict": 4, "cache_prompt": True, **body}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def n_tokens(url: str, text: str) -> int:
    return len(httpx.post(url + "/tokenize", json={"content": text}).json()["tokens"])


def probs(url: str, prompt: str, images: dict[int, bytes], **extra) -> list:
    """The next-token distribution after the prompt (top 8), which every image changes."""
    out = complete(url, prompt=prompt, image_data=[{"id": k, "data": b64(v)} for k, v in images.items()],
                   n_predict=1, n_probs=8, **extra)
    return [(p["id"], round(p["logprob"], 5)) for p in out["completion_probabilities"][0]["top_logprobs"]]


def test_completion_with_an_image(mm_server):
    srv = mm_server()
    text_only = complete(srv.url, prompt="Describe this picture:")
    out = complete(srv.url, prompt="Describe [img-7] this picture:", image_data=[{"id": 7, "data": b64(RED)}])
    assert out["tokens_predicted"] == 4
    # the image's 16 positions are part of the evaluated prompt, between the text on either side
    n_bos = text_only["tokens_evaluated"] - n_tokens(srv.url, "Describe this picture:")
    assert out["tokens_evaluated"] == n_bos + n_tokens(srv.url, "Describe ") + N_IMAGE + n_tokens(srv.url, " this picture:")
    assert httpx.get(srv.url + "/props").json()["modalities"] == {"vision": True, "audio": False}


def test_todays_llama_cpp_prompt_object(mm_server):
    srv = mm_server()
    legacy = complete(srv.url, prompt="a [img-1] b", image_data=[{"id": 1, "data": b64(RED)}], n_probs=4, n_predict=1,
                      cache_prompt=False)
    today = complete(srv.url, prompt={"prompt_string": "a <__media__> b", "multimodal_data": [b64(RED)]}, n_probs=4,
                     n_predict=1, cache_prompt=False)
    assert today["completion_probabilities"] == legacy["completion_probabilities"]
    assert today["tokens_evaluated"] == legacy["tokens_evaluated"]
    plain = complete(srv.url, prompt={"prompt_string": "just text"})
    assert plain["tokens_predicted"] == 4
    r = httpx.post(srv.url + "/completion", json={"prompt": {"prompt_string": "a <__media__> b", "multimodal_data": []}})
    assert r.status_code == 400 and "1 <__media__> places for 0 images" in r.json()["error"]["message"]


def test_the_model_sees_the_image(mm_server):
    srv = mm_server()
    red = probs(srv.url, "a [img-1] b", {1: RED}, cache_prompt=False)
    assert probs(srv.url, "a [img-1] b", {1: RED}, cache_prompt=False) == red  # deterministic
    assert probs(srv.url, "a [img-1] b", {1: BLUE}, cache_prompt=False) != red  # another image, other logits


def test_a_cached_image_is_reused_and_gives_the_same_result(mm_server):
    srv = mm_server("-np", "1")
    cold = probs(srv.url, "look [img-1] at this", {1: RED}, cache_prompt=False)
    first = complete(srv.url, prompt="look [img-1] at this", image_data=[{"id": 1, "data": b64(RED)}], n_predict=1)
    again = complete(srv.url, prompt="look [img-1] at this", image_data=[{"id": 1, "data": b64(RED)}], n_predict=1,
                     n_probs=8)
    assert again["tokens_cached"] == first["tokens_evaluated"] - 1  # the image's KV was kept
    assert [(p["id"], round(p["logprob"], 5)) for p in again["completion_probabilities"][0]["top_logprobs"]] == cold
    # another image at the same place: only the text before it is reused, and the result is the new image's
    other = complete(srv.url, prompt="look [img-1] at this", image_data=[{"id": 1, "data": b64(BLUE)}], n_predict=1,
                     n_probs=8)
    n_before = complete(srv.url, prompt="look ", n_predict=0, cache_prompt=False)["tokens_evaluated"]
    assert other["tokens_cached"] == n_before
    assert [(p["id"], round(p["logprob"], 5)) for p in other["completion_probabilities"][0]["top_logprobs"]] == \
        probs(srv.url, "look [img-1] at this", {1: BLUE}, cache_prompt=False)


def test_a_prompt_with_an_image_comes_back_from_ram_only_for_the_same_image(mm_server):
    prompt = "look closely at the following picture and then [img-1] tell me about it"
    ref = mm_server("--cache-ram", "0")
    cold = {name: probs(ref.url, prompt, {1: png}, cache_prompt=False) for name, png in (("red", RED), ("blue", BLUE))}
    n_before = complete(ref.url, prompt=prompt.split("[img-1]")[0], n_predict=0)["tokens_evaluated"]
    srv = mm_server("-np", "1", "--cache-ram", "16")
    first = complete(srv.url, prompt=prompt, image_data=[{"id": 1, "data": b64(RED)}], n_predict=1)
    complete(srv.url, prompt="something else entirely, a text without pictures", n_predict=1)  # RED's prompt to RAM
    # the same text with another image: the entry's text before the image only (image keys differ)
    blue = complete(srv.url, prompt=prompt, image_data=[{"id": 1, "data": b64(BLUE)}], n_predict=1, n_probs=8)
    assert blue["tokens_cached"] == n_before
    assert [(p["id"], round(p["logprob"], 5)) for p in blue["completion_probabilities"][0]["top_logprobs"]] == cold["blue"]
    red = complete(srv.url, prompt=prompt, image_data=[{"id": 1, "data": b64(RED)}], n_predict=1, n_probs=8)
    assert red["tokens_cached"] == first["tokens_evaluated"] - 1  # the image's KV, loaded from RAM
    assert [(p["id"], round(p["logprob"], 5)) for p in red["completion_probabilities"][0]["top_logprobs"]] == cold["red"]


def test_the_first_of_two_images_is_reused_when_only_the_second_changes(mm_server):
    srv = mm_server("-np", "1")
    complete(srv.url, prompt="x [img-1] y", image_data=[{"id": 1, "data": b64(RED)}], n_predict=0)
    images = {1: RED, 2: BLUE}
    out = complete(srv.url, prompt="x [img-1][img-2] z", image_data=[{"id": k, "data": b64(v)} for k, v in images.items()],
                   n_predict=1, n_probs=8)
    n_x = complete(srv.url, prompt="x ", n_predict=0, cache_prompt=False)["tokens_evaluated"]
    assert out["tokens_cached"] == n_x + N_IMAGE
    assert [(p["id"], round(p["logprob"], 5)) for p in out["completion_probabilities"][0]["top_logprobs"]] == \
        probs(srv.url, "x [img-1][img-2] z", images, cache_prompt=False)


def test_media_prompt_cuts_and_runs():
    m = MediaPrompt(tokens=[5, 6] + [-9] * 4 + [7] + [-8] * 4 + [3])
    m.images = {2: ImageChunk(0, 2, 4), 7: ImageChunk(0, 7, 4)}
    assert [m.boundary(n) for n in range(13)] == [0, 1, 2, 2, 2, 2, 6, 7, 7, 7, 7, 11, 12]
    assert m.text_run(0, 12) == 2 and m.text_run(6, 12) == 1 and m.text_run(11, 12) == 1 and m.text_run(0, 1) == 1
    m.shift(3)
    assert sorted(m.images) == [5, 10] and m.boundary(6) == 5
    assert image_key(b"a") == image_key(b"a") < -1 and image_key(b"a") != image_key(b"b")
    assert -(2**31) <= image_key(b"a")  # fits llama_token (int32) in slot files


def test_two_images_in_order(mm_server):
    srv = mm_server()
    ab = probs(srv.url, "[img-1] then [img-2] end", {1: RED, 2: BLUE}, cache_prompt=False)
    ba = probs(srv.url, "[img-2] then [img-1] end", {1: RED, 2: BLUE}, cache_prompt=False)
    assert ab != ba


def test_image_prompts_batch_with_generating_slots(mm_server):
    srv = mm_server("-np", "4")
    body = {"prompt": "p [img-1] q", "image_data": [{"id": 1, "data": b64(RED)}], "n_predict": 24, "ignore_eos": True,
            "cache_prompt": False}
    text = {"prompt": "plain text", "n_predict": 24, "ignore_eos": True}
    with cf.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda b: complete(srv.url, **b), [body, text, body, text]))
    assert all(r["tokens_predicted"] == 24 for r in results)
    assert results[0]["content"] == results[2]["content"]  # same image, same greedy tokens


def test_chat_with_an_image_url(mm_server):
    import openai

    srv = mm_server()
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x")
    url = "data:image/png;base64," + b64(RED)
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                             {"type": "image_url", "image_url": {"url": url}}]}]
    with_image = client.chat.completions.create(model="m", messages=messages, max_tokens=3, temperature=0)
    without = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "What is this?"}],
                                             max_tokens=3, temperature=0)
    assert with_image.choices[0].finish_reason == "length"
    # the image and the newline that separates content parts
    assert with_image.usage.prompt_tokens > without.usage.prompt_tokens + N_IMAGE - 1
    stream = client.chat.completions.create(model="m", messages=messages, max_tokens=3, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == with_image.choices[0].message.content
    r = httpx.post(srv.url + "/apply-template", json={"messages": messages})
    assert r.status_code == 200 and "<__media__>" in r.json()["prompt"]


@pytest.mark.parametrize(
    "body, message",
    [
        ({"prompt": "a [img-1] b", "image_data": [{"id": 1, "data": "not base64!"}]}, "base64"),
        ({"prompt": "a [img-1] b", "image_data": [{"id": 1, "data": b64(b"GIF89a but not really")}]}, "pixels"),  # its header claims 25120x29813
        ({"prompt": "a [img-1] b", "image_data": [{"id": 1, "data": b64(b"not an image at all")}]}, "could not be decoded"),
        ({"prompt": "a [img-2] b", "image_data": [{"id": 1, "data": b64(RED)}]}, "no image with id 2"),
        ({"prompt": "a b", "image_data": [{"id": 1, "data": b64(RED)}]}, "[img-1]"),
        ({"prompt": "a [img-1]", "image_data": [{"id": 1, "data": b64(RED)}]}, "ends with an image"),
        ({"prompt": [1, 2], "image_data": [{"id": 1, "data": b64(RED)}]}, "must be a string"),
        ({"prompt": "<__media__> [img-1] b", "image_data": [{"id": 1, "data": b64(RED)}]}, "reserves"),
        ({"prompt": "a [img-1] b", "image_data": {"id": 1}}, "array"),
    ],
)
def test_bad_images_are_client_errors(mm_server, body, message):
    srv = mm_server()
    r = httpx.post(srv.url + "/completion", json={**body, "n_predict": 1})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and message in err["message"], err
    assert complete(srv.url, prompt="still fine")["tokens_predicted"] == 4  # the slot was not left busy


@pytest.mark.parametrize(
    "part, message",
    [
        ({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}, "data:image"),
        ({"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGk="}}, "only images"),
        ({"type": "input_audio", "input_audio": {"data": "aGk=", "format": "wav"}}, "'image_url'"),
    ],
)
def test_bad_chat_image_parts(mm_server, part, message):
    srv = mm_server()
    r = httpx.post(srv.url + "/v1/chat/completions",
                   json={"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, part]}]})
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text


def test_an_image_larger_than_the_context_is_refused(live_server, tmp_path):
    big = build_tiny_mmproj(tmp_path / "big.gguf", image_size=128, patch_size=8)  # 256 tokens per image
    srv = live_server("--mmproj", str(big), "-c", "256")
    r = httpx.post(srv.url + "/completion", json={"prompt": "a [img-1] b", "image_data": [{"id": 1, "data": b64(RED)}]})
    assert r.status_code == 400 and r.json()["error"]["type"] == "exceed_context_size_error", r.text


def test_a_prompt_ending_with_a_one_token_image_is_refused(live_server, tmp_path):
    one = build_tiny_mmproj(tmp_path / "one.gguf", image_size=8, patch_size=8)  # 1 token per image
    srv = live_server("--mmproj", str(one), "-np", "1")
    r = httpx.post(srv.url + "/completion", json={"prompt": "a [img-1]", "image_data": [{"id": 1, "data": b64(RED)}]},
                   timeout=10)
    assert r.status_code == 400 and "ends with an image" in r.json()["error"]["message"], r.text
    out = complete(srv.url, prompt="a [img-1] b", image_data=[{"id": 1, "data": b64(RED)}])
    assert out["tokens_predicted"] == 4  # the slot is free, and a 1-token image works


def test_images_need_a_projector(live_server):
    srv = live_server()
    r = httpx.post(srv.url + "/completion", json={"prompt": "a [img-1] b", "image_data": [{"id": 1, "data": b64(RED)}]})
    assert r.status_code == 400 and "--mmproj" in r.json()["error"]["message"]
    assert httpx.get(srv.url + "/props").json()["modalities"]["vision"] is False


def test_embedding_with_images(mm_server):
    srv = mm_server("--embedding", "-np", "2")

    def embed(content: str, images: dict[int, bytes]) -> list[float]:
        r = httpx.post(srv.url + "/embedding", json={"content": content,
                                                      "image_data": [{"id": k, "data": b64(v)} for k, v in images.items()]})
        assert r.status_code == 200, r.text
        return r.json()["embedding"]

    red = embed("a picture: [img-1]", {1: RED})  # ending with an image is fine here: no sampling
    assert len(red) == 64 and abs(sum(x * x for x in red) - 1) < 1e-4
    assert embed("a picture: [img-1]", {1: RED}) == pytest.approx(red, abs=1e-6)
    blue = embed("a picture: [img-1]", {1: BLUE})
    assert blue != pytest.approx(red, abs=1e-3)
    text = httpx.post(srv.url + "/embedding", json={"content": "a picture: "}).json()["embedding"]
    assert text != pytest.approx(red, abs=1e-3)
    # texts and images in one batch of requests
    with cf.ThreadPoolExecutor(3) as pool:
        again = list(pool.map(lambda i: embed("a picture: [img-1]", {1: RED}), range(3)))
    assert all(v == pytest.approx(red, abs=1e-5) for v in again)


def test_image_data_on_infill_says_where_images_go(mm_server):
    srv = mm_server()
    r = httpx.post(srv.url + "/infill", json={"input_prefix": "a", "input_suffix": "b", "image_data": [{"id": 1, "data": b64(RED)}]})
    assert r.status_code == 400 and "/v1/chat/completions" in r.json()["error"]["message"], r.text


def test_slot_files_keep_images_and_name_the_projector(mm_server, live_server, tmp_path, mmproj):
    srv = mm_server("-np", "1", "--slot-save-path", str(tmp_path))
    body = {"prompt": "saved [img-1] picture", "image_data": [{"id": 1, "data": b64(RED)}], "n_predict": 1}
    first = complete(srv.url, **body)
    assert httpx.post(srv.url + "/slots/0?action=save", json={"filename": "img.bin"}).status_code == 200
    assert httpx.post(srv.url + "/slots/0?action=erase").status_code == 200
    assert httpx.post(srv.url + "/slots/0?action=restore", json={"filename": "img.bin"}).status_code == 200
    again = complete(srv.url, **body)
    assert again["tokens_cached"] == first["tokens_evaluated"] - 1  # the restored KV holds the image
    # a server with another projector (or none) must not reuse those image embeddings
    other = build_tiny_mmproj(tmp_path / "other.gguf", seed=99)
    srv2 = live_server("--mmproj", str(other), "-c", "1024", "-np", "1", "--slot-save-path", str(tmp_path))
    r = httpx.post(srv2.url + "/slots/0?action=restore", json={"filename": "img.bin"})
    assert r.status_code == 400 and "mmproj" in r.json()["error"]["message"], r.text


def test_a_projector_for_another_model_fails_the_start_with_a_reason(tiny_model, tmp_path):
    from kubellama_server.testing.live import LiveServer

    wrong = build_tiny_mmproj(tmp_path / "wrong.gguf", n_embd_text=32)  # the text model's n_embd is 64
    srv = LiveServer(["-m", str(tiny_model), "-t", "1", "--mmproj", str(wrong)])
    try:
        with pytest.raises(RuntimeError, match="embedding size must match"):
            srv.start()
    finally:
        srv.stop()


def test_images_are_timed_in_metrics(mm_server):
    srv = mm_server("--metrics")
    complete(srv.url, prompt="a [img-1] b [img-2] c", image_data=[{"id": 1, "data": b64(RED)}, {"id": 2, "data": b64(BLUE)}])
    names = ("kubellama_image_seconds_count", "kubellama_image_seconds_sum")
    count, total = ({s.name: s.value for s in read_samples(httpx.get(srv.url + "/metrics").content, names)}[n]
                    for n in names)
    assert count == 2 and total > 0
