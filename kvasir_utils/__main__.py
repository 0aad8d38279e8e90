import sys

# jsonschema, which nbformat (under papermill and nbconvert) imports, builds a grammar for IRIs at import
# where rfc3987-syntax is installed (jupyter-events asks for it): 0.9 s of every command that runs or
# renders a notebook, each `make` step among them. A notebook file has no IRI to check, so the commands
# go without that one format check (JupyterLab, started as its own program, keeps it).
sys.modules.setdefault("rfc3987_syntax", None)

try:
    from kvasir_utils.run.cli import main
except KeyboardInterrupt:  # Ctrl-C while the command is still starting up
    print("interrupted: nothing was written; run the same command again.", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
