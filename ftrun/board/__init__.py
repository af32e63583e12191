"""The board: a web page (Gradio) to compose, launch and watch runs and sweeps, chat with and export their models.

The page is a front for the command line: the Train form is built from the config
schema, shows the exact ``python -m ftrun ...`` it will run, refuses what the CLI
would refuse with the CLI's message, and launches the CLI as a child process
(:mod:`ftrun.board.jobs`). One file per tab; labels in English and Chinese
(:mod:`ftrun.board.locales`). Start it with ``python -m ftrun.board`` (``ftrun board``).
"""
