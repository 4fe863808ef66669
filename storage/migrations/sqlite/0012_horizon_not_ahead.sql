-- The retention horizon cannot pass the present (this host's clock, the one SQLite reads): once it
-- had, every DELETE would pass as retention, and a lifecycle run on a clock set ahead would take
-- events acknowledged after it, for as long as the real time stays behind the horizon.
CREATE TRIGGER lifecycle_not_ahead BEFORE UPDATE ON lifecycle
WHEN NEW.horizon > strftime('%Y-%m-%d %H:%M:%f', 'now')
BEGIN SELECT RAISE(ABORT, 'the retention horizon cannot pass the present'); END;
