"""The converter's error type."""


class ConversionError(ValueError):
    """The inputs cannot be converted; the message names the file, flag or keys at fault."""
