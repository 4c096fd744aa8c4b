"""The local engine: open diffusion models served in this process (the `local` provider).

The only package that imports torch and diffusers, and only when a local model is configured
(`pip install -e '.[local]'`). `describe` reads a checkpoint's JSON configs without torch;
`loader` turns a directory or hub id into pipelines on the best device; `pipelines` turns one
batch of jobs into one pipeline call; `runner` queues, batches and cancels jobs.
"""
