"""netpath's kernel side, split by concern as cilium/ebpf splits it, on libbpf.so.1.

- build.py: the program text and BCC, which compiles it in a short-lived child (the only BCC importer);
- cache.py: the private store, cache keys and the trust rules a cached build must pass;
- load.py: maps, relocations, program loads and attach (raw tracepoint, tp_btf, kprobe links);
- read.py: maps read in batches (with a per-key fallback), ring and perf buffers;
- libbpf.py: the thin ctypes binding all of them call;
- program.py: `Program`, a loaded build as sessions use it, and `compile_program`, the one load path.
"""
