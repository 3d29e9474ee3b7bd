"""Key management over time: rotation, retirement, re-keying and crypto-shredding."""
