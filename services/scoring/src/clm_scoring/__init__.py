"""CLM scoring: keeps CLV and churn probability per customer."""
