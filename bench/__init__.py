"""kubellama benchmark harness: run the same workloads against kubellama-server and
its peers (llama.cpp's C++ llama-server, llama-cpp-python's servers) and report
throughput, latency and our ratio to each peer. Run with ``python -m bench``."""
