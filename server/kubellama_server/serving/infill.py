"""POST /infill: fill-in-the-middle from the model's FIM tokens.

The prompt is [BOS] <FIM_PRE> prefix <FIM_SUF> suffix <FIM_MID> [prompt] (with
`--spm-infill`: suffix first), built when the task is prepared on a worker thread (`Task.build_prompt`), as
llama.cpp's server does. `input_extra` (other files of the project, as code-completion
plugins send them) goes in front with the repo-level pattern of today's llama.cpp:
<FIM_REP>myproject\n <FIM_SEP>filename\n text ... <FIM_SEP>filename\n, or plain
snippet separators when the model has no repo-level tokens.
"""

from __future__ import annotations

from ..engine.params import parse_slot_params
from ..engine.task import Task, TaskSink
from ..errors import invalid
from .media import require_multimodal


def missing_fim_tokens(model) -> list[str]:
    names = {"fim_pre": model.fim_pre, "fim_suf": model.fim_suf, "fim_mid": model.fim_mid}
    return [name for name, tok in names.items() if tok is None or tok < 0]


SNIPPET = "\n\n--- snippet ---\n\n"  # llama.cpp's separator when the model has no <FIM_SEP>


def input_extra(value) -> list[tuple[str, str]]:
    """`input_extra`: [{"filename": str, "text": str}, ...] -> [(filename, text)]."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid("'input_extra' must be an array of {\"filename\": string, \"text\": string} objects")
    out = []
    for k, chunk in enumerate(value):
        if not isinstance(chunk, dict) or not isinstance(chunk.get("text", ""), str) \
                or not isinstance(chunk.get("filename", "tmp"), str):
            raise invalid(f"'input_extra.{k}' must be an object with string 'filename' and 'text'")
        out.append((chunk.get("filename", "tmp"), chunk.get("text", "")))
    return out


def extra_tokens(model, chunks: list[tuple[str, str]], tok) -> list[int]:
    """The project context in front of the FIM prompt (nothing without `input_extra`)."""
    if not chunks:
        return []
    out: list[int] = []
    if model.fim_rep >= 0:
        out += [model.fim_rep] + tok("myproject\n")
    for filename, text in chunks:
        out += [model.fim_sep] + tok(filename + "\n") if model.fim_sep >= 0 else tok(SNIPPET)
        out += tok(text)
    if model.fim_sep >= 0:  # the file being edited (llama.cpp does not name it either)
        out += [model.fim_sep] + tok("filename\n")
    return out


def build_task(engine, body: dict) -> Task:
    engine.require_ready()
    missing = missing_fim_tokens(engine.model)
    if missing:
        raise invalid(
            f"this model has no fill-in-the-middle tokens (missing: {', '.join(missing)}); "
            "use a code model with FIM tokens for /infill"
        )
    if body.get("image_data"):
        require_multimodal(engine, "'image_data'")
        raise invalid("'image_data' is not supported on /infill yet: send images to /completion or /v1/chat/completions")
    texts = {}
    for key in ("input_prefix", "input_suffix", "prompt"):
        v = body.get(key, "")
        if v is None:
            v = ""
        if not isinstance(v, str):
            raise invalid(f"'{key}' must be a string")
        texts[key] = v
    if "input_prefix" not in body and "input_suffix" not in body:
        raise invalid("'input_prefix' or 'input_suffix' is required")
    params = parse_slot_params(body, engine.default_params, n_slots=engine.n_slots)
    prefix, suffix, extra = texts["input_prefix"], texts["input_suffix"], texts["prompt"]
    chunks = input_extra(body.get("input_extra"))
    spm = engine.settings.spm_infill

    def build(model) -> list[int]:
        def tok(text: str) -> list[int]:
            return model.tokenize(text, add_special=False, parse_special=False)

        tokens = [model.bos] if model.add_bos and model.bos >= 0 else []
        tokens += extra_tokens(model, chunks, tok)
        pre = [model.fim_pre] + tok(prefix)
        suf = [model.fim_suf] + tok(suffix)
        tokens += (suf + pre) if spm else (pre + suf)
        tokens.append(model.fim_mid)
        if extra:
            tokens += tok(extra)
        return tokens

    n_bytes = sum(len(t.encode("utf-8", "surrogatepass")) for t in [prefix, suffix, extra, *(f + t for f, t in chunks)])
    return Task(kind="completion", prompt=prefix, params=params, sink=TaskSink(), build_prompt=build, use_system_prompt=False,
                prompt_bytes=n_bytes)
