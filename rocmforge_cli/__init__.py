"""rocmforge front ends: the Typer command line, the REPL and terminal rendering."""
