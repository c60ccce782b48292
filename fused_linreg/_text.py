"""Text for the command lines (demo, examples)."""


def help_description(docstring: str) -> str:
    """The first paragraph of a module docstring as an argparse description: argparse prints it
    as it is, so reST's ``literal`` marks are dropped."""
    return docstring.split("\n\n")[0].replace("``", "")
