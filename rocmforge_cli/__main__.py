from rocmforge_cli.app import entry

entry()
