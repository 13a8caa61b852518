// Dashboard behaviour without inline scripts (CSP: script-src self).
