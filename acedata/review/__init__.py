"""Human review of instructions: the review web app, its store, and the `reviews` table."""
