"""The exit codes every command shares (systemd's unit reads them:
RestartPreventExitStatus=2 3)."""

EXIT_OK = 0
EXIT_TICK_FAILED = 1
EXIT_CONFIG = 2
EXIT_DATABASE = 3
