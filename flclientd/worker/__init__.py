"""The training child: one process (or one per GPU) per run, started by the client daemon.

It builds the app's model and data once, then trains and validates on
request until it is told to stop or killed. Custom code from the app's
``resources/`` is imported only here, so a fresh child per run always
picks up changed code and the daemon never runs it.

Importing this package must stay cheap: the daemon imports
:mod:`flclientd.worker.protocol` and must not pull in torch.
"""
