"""The shipped example workflows: one graph description (:mod:`.graph`) written as UI and API files
(:mod:`.build`, :mod:`.lora`)."""
