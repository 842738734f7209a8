from netpath.cli.main import entry

entry()
