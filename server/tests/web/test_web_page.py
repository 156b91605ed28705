"""The built-in web page and completion.js, driven in headless Chromium against a running server."""

from __future__ import annotations

import httpx

from kubellama_server.http.static import BUILTIN_DIR

# Records every text #output was given (one mutation record each, even when several
# arrive in one observer callback), so the test sees the text arrive in pieces.
WATCH_OUTPUT = """
window.__updates = [];
new MutationObserver((records) => {
  for (const r of records) for (const n of r.addedNodes) window.__updates.push(n.textContent);
}).observe(document.getElementById('output'), {childList: true});
true
"""


def _send_and_watch(browser, prompt: str) -> list[str]:
    browser.eval(WATCH_OUTPUT)
    browser.type_into("prompt", prompt)
    assert browser.eval("document.getElementById('prompt').value") == prompt
    browser.eval("document.getElementById('send').click()")
    status = browser.wait_for("['done', 'stopped'].includes(document.getElementById('status').textContent) || "
                              "document.getElementById('status').textContent.startsWith('error') && document.getElementById('status').textContent", 60)
    assert status is True or status == "done" or status is not None
    assert browser.eval("document.getElementById('status').textContent") == "done", browser.console
    return browser.eval("window.__updates")


def test_completion_mode_streams_text(live_server, browser):
    srv = live_server("-np", "2", "--api-key", "page-key")
    browser.goto(srv.url + "/")
    assert browser.eval("document.title") == "kubellama"
    browser.eval("document.getElementById('mode-completion').click()")
    browser.eval("document.getElementById('n_predict').value = '48'")
    browser.type_into("api_key", "page-key")
    updates = _send_and_watch(browser, "Once upon a time")
    texts = [u for u in updates if u]
    assert len(set(texts)) >= 3, updates  # the text arrived in several pieces ...
    for shorter, longer in zip(texts, texts[1:]):
        assert longer.startswith(shorter)  # ... each extending the last
    final = browser.eval("document.getElementById('output').textContent")
    # the same request without the page gives the same number of tokens
    assert final == texts[-1] and len(final) > 0


def test_chat_mode_streams_and_keeps_history(live_server, browser):
    srv = live_server("-np", "2")
    browser.goto(srv.url + "/")
    browser.eval("document.getElementById('n_predict').value = '24'")
    updates = _send_and_watch(browser, "Hello there")
    assert len({u for u in updates if u}) >= 2
    msgs = browser.eval("[...document.querySelectorAll('#conversation .msg')].map(m => m.textContent)")
    assert msgs[0] == "user:Hello there" and msgs[1].startswith("assistant:") and len(msgs) == 2


def test_chat_mode_sends_an_image_when_the_server_has_a_projector(live_server, browser, tmp_path):
    import base64

    from kubellama_server.testing.tiny_mmproj import build_tiny_mmproj, tiny_png

    srv = live_server("--mmproj", str(build_tiny_mmproj(tmp_path / "mmproj.gguf")), "-c", "1024")
    browser.goto(srv.url + "/")
    assert browser.wait_for("document.getElementById('image-row').dataset.vision", 10) == "true"
    assert browser.eval("document.getElementById('image-row').hidden") is False
    png = base64.b64encode(tiny_png(8, 8)).decode()
    browser.eval(f"""(() => {{
      const bytes = Uint8Array.from(atob('{png}'), (c) => c.charCodeAt(0));
      const dt = new DataTransfer();
      dt.items.add(new File([bytes], 'cat.png', {{type: 'image/png'}}));
      document.getElementById('image').files = dt.files;
      return true;
    }})()""")
    browser.eval("document.getElementById('n_predict').value = '8'")
    _send_and_watch(browser, "What is this?")
    msgs = browser.eval("[...document.querySelectorAll('#conversation .msg')].map(m => m.textContent)")
    assert msgs[0] == "user:What is this? [image: cat.png]" and msgs[1].startswith("assistant:"), msgs
    assert browser.eval("document.getElementById('image').files.length") == 0  # sent once, not with every turn
    # the image went to the model: the slot evaluated the text and the projector's 16 image tokens
    slot = httpx.get(srv.url + "/slots").json()[0]
    text_only = httpx.post(srv.url + "/apply-template", json={"messages": [{"role": "user", "content": "What is this?"}]}).json()
    assert slot["n_prompt_tokens"] > len(httpx.post(srv.url + "/tokenize", json={"content": text_only["prompt"]}).json()["tokens"]) + 15


def test_the_image_input_stays_hidden_without_a_projector(live_server, browser):
    srv = live_server()
    browser.goto(srv.url + "/")
    assert browser.wait_for("document.getElementById('image-row').dataset.vision", 10) == "false"
    assert browser.eval("document.getElementById('image-row').hidden") is True


def test_wrong_key_shows_the_error(live_server, browser):
    srv = live_server("--api-key", "right")
    browser.goto(srv.url + "/")
    browser.eval("document.getElementById('mode-completion').click()")
    browser.type_into("api_key", "wrong")
    browser.type_into("prompt", "hi")
    browser.eval("document.getElementById('send').click()")
    status = browser.wait_for("document.getElementById('status').textContent.startsWith('error') && document.getElementById('status').textContent")
    assert "Invalid API Key" in status


def test_reference_example_page_from_path(live_server, browser, tmp_path):
    """A user's page in --path DIR, written like the reference's example, imports /completion.js."""
    (tmp_path / "index.html").write_text("""<!doctype html><html><body><div id="out"></div><div id="done"></div>
<script type="module">
import { llama } from '/completion.js'
const prompt = `### Instruction:
Write dad jokes, each one paragraph.
You can use html formatting if needed.

### Response:`
let chunks = 0
for await (const chunk of llama(prompt, { n_predict: 32 })) {
  chunks += 1
  document.getElementById('out').textContent += chunk.data.content
}
document.getElementById('done').textContent = 'chunks=' + chunks
</script></body></html>""")
    srv = live_server("--path", str(tmp_path))
    assert httpx.get(srv.url + "/").text.startswith("<!doctype html><html><body><div id=\"out\">")
    browser.goto(srv.url + "/")
    done = browser.wait_for("document.getElementById('done').textContent", 60)
    assert int(done.split("=")[1]) >= 2, browser.console
    assert browser.eval("document.getElementById('out').textContent")


def test_builtin_assets_exist():
    js = (BUILTIN_DIR / "completion.js").read_text()
    assert "export async function* llama(prompt, params = {}, config = {})" in js
    assert 'import { llama } from "/completion.js"' in (BUILTIN_DIR / "index.html").read_text()
