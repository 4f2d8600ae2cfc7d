"""`python -m cli` runs the `loyalty` command."""
from cli.main import app

app(prog_name="loyalty")
