"""The internal text markup that readers write and the chunker reads."""

# A heading line in the internal text: ``§§ <level> <heading>``.
HEADING = "§§ "
