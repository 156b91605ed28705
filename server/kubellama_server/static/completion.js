// kubellama-server's completion.js: the llama.cpp server's streaming helper.
//
//   import { llama } from '/completion.js'
//   for await (const chunk of llama("Tell me a joke", { n_predict: 64 })) {
//     document.write(chunk.data.content)
//   }
//
// llama(prompt, params, config) is an async generator over the server-sent events
// of POST /completion (or config.endpoint); each chunk is { data: {...} }. It
// returns the whole generated text. params.api_key (or config.api_key) is sent as
// "Authorization: Bearer <key>". config.controller (an AbortController) stops it.

const paramDefaults = {
  stream: true,
  n_predict: 500,
  temperature: 0.2,
  stop: ["</s>"],
};

let generation_settings = null;

export async function* llama(prompt, params = {}, config = {}) {
  const controller = config.controller ?? new AbortController();
  const api_url = (config.api_url ?? "").replace(/\/+$/, "");
  const endpoint = config.endpoint ?? "/completion";
  const { api_key, ...rest } = params;
  const key = api_key ?? config.api_key;
  const completionParams = { ...paramDefaults, ...rest, prompt };

  const response = await fetch(`${api_url}${endpoint}`, {
    method: "POST",
    body: JSON.stringify(completionParams),
    headers: {
      "Content-Type": "application/json",
      Accept: "text/event-stream",
      ...(key ? { Authorization: `Bearer ${key}` } : {}),
    },
    signal: controller.signal,
  });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body.error && body.error.message) message = body.error.message;
    } catch (_) { /* not JSON */ }
    throw new Error(`llama: ${message}`);
  }

  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let content = "";
  let leftover = "";
  try {
    let cont = true;
    while (cont) {
      const result = await reader.read();
      if (result.done) break;
      const text = leftover + decoder.decode(result.value, { stream: true });
      const lines = text.split("\n");
      leftover = text.endsWith("\n") ? "" : lines.pop();
      for (const line of lines) {
        const match = /^(\S+):\s(.*)$/.exec(line);
        if (!match) continue;
        const chunk = {};
        chunk[match[1]] = match[2];
        if (chunk.data === "[DONE]") { cont = false; break; }
        if (chunk.data) {
          chunk.data = JSON.parse(chunk.data);
          if (chunk.data.error) throw new Error(`llama: ${chunk.data.error.message}`);
          content += chunk.data.content ?? "";
          yield chunk;
          if (chunk.data.stop) {
            if (chunk.data.generation_settings) generation_settings = chunk.data.generation_settings;
            cont = false;
            break;
          }
        }
        if (chunk.error) throw new Error(`llama: ${chunk.error}`);
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") console.error("llama error: ", e);
    throw e;
  } finally {
    controller.abort();
  }
  return content;
}

// Calls `callback(chunk)` for every chunk; resolves with the whole text.
export const llamaComplete = async (params, controller, callback) => {
  let text = "";
  for await (const chunk of llama(params.prompt, params, { controller })) {
    text += chunk.data.content ?? "";
    callback(chunk);
  }
  return text;
};

// A promise of the whole generated text.
export const llamaPromise = (prompt, params = {}, config = {}) => new Promise(async (resolve, reject) => {
  let content = "";
  try {
    for await (const chunk of llama(prompt, params, config)) content += chunk.data.content ?? "";
    resolve(content);
  } catch (error) {
    reject(error);
  }
});

// The server's default generation settings (GET /props).
export const llamaModelInfo = async (config = {}) => {
  if (!generation_settings) {
    const api_url = (config.api_url ?? "").replace(/\/+$/, "");
    const headers = config.api_key ? { Authorization: `Bearer ${config.api_key}` } : {};
    const props = await fetch(`${api_url}/props`, { headers }).then((r) => r.json());
    generation_settings = props.default_generation_settings;
  }
  return generation_settings;
};
