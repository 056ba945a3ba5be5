"""The paper's tables and figures from the metrics files, through name -> function registries."""
