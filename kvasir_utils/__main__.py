import sys

try:
    from kvasir_utils.run.cli import main
except KeyboardInterrupt:  # Ctrl-C while the command is still starting up
    print("interrupted: nothing was written; run the same command again.", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
