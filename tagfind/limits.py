"""Limits shared by the modules that read driver files (kept apart so that light modules can
use them without importing the PE parser and numpy)."""

# No driver is this large; bigger files are refused unread (a 2 GB sparse .sys must not be
# loaded, hashed twice or searched on every query).
MAX_FILE_SIZE = 512 * 1024 * 1024
