"""Embeddings on the real default model (Gemma 3 270M): batching-invariant and meaningful."""

from __future__ import annotations

import numpy as np
import openai


def test_gemma_embeddings(live_server, gemma_model):
    srv = live_server("--embedding", "-np", "3", "-c", "1536", model=gemma_model)
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=120)
    texts = ["The cat sat on the mat.", "A cat is sitting on a rug.", "Stock markets fell sharply on Monday."]
    batch = np.array([d.embedding for d in client.embeddings.create(model="m", input=texts).data])
    alone = np.array([client.embeddings.create(model="m", input=t).data[0].embedding for t in texts])
    assert batch.shape == (3, 640)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    assert np.allclose(batch, alone, atol=2e-3)  # decoded together or alone: the same vectors
    sim = batch @ batch.T
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[1, 2]  # the two cat sentences are closest
    # generation still works on the same server afterwards
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Say hi"}], max_tokens=4)
    assert r.choices[0].message.content is not None and r.usage.completion_tokens >= 1
