"""The demo and its simulator: users with hidden tastes playing the live platform in a closed
loop. Nothing in the core imports this package."""
