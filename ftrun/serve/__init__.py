"""An OpenAI-compatible HTTP server for a fine-tuned model (``python -m ftrun.serve``), split as vLLM's
OpenAI server is:

- :mod:`ftrun.serve.protocol`: the request models (pydantic), errors and response bodies;
- :mod:`ftrun.serve.generation`: the engine: a request becomes a chat turn, generated one at a time;
- :mod:`ftrun.serve.app`: the routes (FastAPI);
- :mod:`ftrun.serve.__main__`: the command line (what is served, on which port).
"""
