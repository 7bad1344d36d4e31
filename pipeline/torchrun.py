"""torchrun for the stages, as `make warmup train NPROC=N` starts it: torch.distributed.run itself, except that a
SIGINT or SIGTERM (Ctrl-C, a job scheduler) ends the job as it ends a one-process stage. The launcher forwards the
signal to every rank, the ranks stop together at once (rank 0 prints the stage's one line, pipeline.utils
user_errors), and the launcher exits with 130 / 143 without its own traceback and shutdown warnings.

    python -m pipeline.torchrun --standalone --nproc_per_node=4 -m pipeline.train --config FILE [key=value ...]
"""

from __future__ import annotations

import logging

# what torch's launcher logs when it forwards a signal: expected here, said by the ranks' one line instead
_SHUTDOWN_NOISE = ("death signal, shutting down workers", "closing signal")


class _QuietShutdown(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in _SHUTDOWN_NOISE)


def main(argv=None):
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun

    for name in ("torch.distributed.elastic.agent.server.api", "torch.distributed.elastic.multiprocessing.api"):
        logging.getLogger(name).addFilter(_QuietShutdown())
    try:
        torchrun(argv)
    except SignalException as e:
        raise SystemExit(128 + int(e.sigval)) from None


if __name__ == "__main__":
    main()
