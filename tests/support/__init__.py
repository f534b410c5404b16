"""The only home of test helpers, shared by tests/ and bench/: the fake OpenAI server
(``fake_openai``, also a process: ``python -m tests.support.fake_openai``), the CLI runner
(``cli``), free ports (``ports``), the scripted chat layer (``chat``), process-level reliability
helpers (``reliability``), a recording TCP proxy (``tcp_proxy``), throwaway PostgreSQL clusters
(``postgres``), the real vLLM server (``vllm``) and the drivers run as subprocesses (``drivers/``)."""
