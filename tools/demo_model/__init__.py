"""The offline demo model's synthetic domain: coloured shapes with captions, and how images are judged."""
