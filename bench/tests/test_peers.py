import os
from pathlib import Path

from bench.peers import GEMMA_JINJA, PEERS, ServerConfig, chat_template_text, example_config, peak_rss_bytes, render_chat
from bench.runner import chat_prompt_problem

CFG = ServerConfig(model="/models/m.gguf", ctx=8192, slots=4, threads=3, batch=256, port=9999)


def test_every_peer_gets_the_same_model_context_slots_and_threads(tmp_path):
    cmds = {name: peer.command(CFG, tmp_path) for name, peer in PEERS.items()}
    for flags in (cmds["llama-server"], cmds["kubellama"]):
        joined = " ".join(flags)
        for part in ("-m /models/m.gguf", "-c 8192", "-np 4", "-t 3", "-tb 3", "-b 256", "--port 9999"):
            assert part in joined
        # llama-server would take the name "gemma" as a literal template: both get the Jinja text
        assert flags[flags.index("--chat-template") + 1] == GEMMA_JINJA
    lcp = " ".join(cmds["llama-cpp-python"])
    for part in ("-m llama_cpp.server", "--model /models/m.gguf", "--n_ctx 8192", "--n_threads 3",
                 "--n_threads_batch 3", "--n_batch 256", "--interrupt_requests False", "--chat_format gemma"):
        assert part in lcp
    # the batched example server reads a config file written next to its logs
    conf = Path(cmds["llama-cpp-python-batched"][-1])
    assert conf.parent == tmp_path and conf.is_file()


def test_example_server_config():
    model = example_config(CFG)["model"]
    assert model["path"] == "/models/m.gguf" and model["n_ctx"] == 8192 and model["n_seq_max"] == 4
    assert model["threads"] == model["threads_batch"] == 3
    assert model["chat_template"] == GEMMA_JINJA
    assert "chat_template" not in example_config(ServerConfig("m", 1, 1, 1, chat_template=None))["model"]


def test_gemma_template_renders_turns():
    text = render_chat("gemma", [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"},
                                 {"role": "assistant", "content": "yo"}], bos_token="<bos>")
    assert text == ("<bos><start_of_turn>user\nS\n\nhi<end_of_turn>\n<start_of_turn>model\nyo<end_of_turn>\n"
                    "<start_of_turn>model\n")


def test_peak_rss_of_a_live_process_and_of_none():
    assert peak_rss_bytes(os.getpid()) > 10 * 2**20
    assert peak_rss_bytes(2**22 + 12345) is None


def test_a_jinja_template_is_passed_through():
    assert chat_template_text("{{ messages }}") == "{{ messages }}"
    assert chat_template_text("gemma") == GEMMA_JINJA


def test_chat_prompt_problem_flags_a_peer_that_evaluates_another_prompt():
    assert chat_prompt_problem(15, 15) is None
    assert chat_prompt_problem(16, 15) is None  # a BOS rule
    assert chat_prompt_problem(0, 15) is None  # the peer did not report: nothing to compare
    problem = chat_prompt_problem(3, 15)  # llama-server given the literal template "gemma"
    assert problem and "3 prompt tokens" in problem and "gives 15" in problem
