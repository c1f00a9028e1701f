"""PyTorch peers: standalone scripts run by an interpreter with torch and torchvision."""
