<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use PHPUnit\Framework\TestCase;

/**
 * A Matomo upgrade that changes the signature of a Model method the plugin overrides must not
 * stop archiving. On a throwaway copy of the real Matomo 5.2 (../shared/matomo), with the
 * plugin active and the extension loaded as php.ini would load it, core/DataAccess/Model.php is
 * edited as a future release might change it (startArchive() gains a return type). Then:
 * declaring the plugin's ClaimingModel regardless (what the plugin did before) is a fatal error
 * in core:archive; the plugin as it is steps aside: core:archive exits 0 and archives with
 * Matomo's own Model, one NOTICE says why, and the System Check warns naming the method.
 */
final class MatomoUpgradeTest extends TestCase
{
    private static ?RealMatomo $matomo = null;

    public static function setUpBeforeClass(): void
    {
        if (RealMatomo::sharedDir() !== null) {
            self::$matomo = RealMatomo::install(['SITES' => 2, 'DAYS' => 2, 'VISITS_PER_DAY' => 3, 'START' => '2024-01-01'],
                ['heartbeat_interval' => 1, 'lease' => 3]);
            self::$matomo->copyPlugin();
        }
    }

    public static function tearDownAfterClass(): void
    {
        self::$matomo?->remove();
        self::$matomo = null;
    }

    protected function setUp(): void
    {
        if (self::$matomo === null) {
            $this->markTestSkipped('no real Matomo: ' . dirname(__DIR__, 3) . '/shared/matomo is not beside the repository');
        }
    }

    private static function failures(string $output): array
    {
        return array_values(preg_grep('/^(WARNING|ERROR|CRITICAL|ALERT|EMERGENCY)\b/', explode("\n", $output)));
    }

    private static function queued(): int
    {
        return (int) self::$matomo->pdo()->query('SELECT COUNT(*) FROM matomo_archive_invalidations')->fetchColumn();
    }

    public function testAChangedModelSignatureNeverStopsArchiving(): void
    {
        $m = self::$matomo;
        [$code, $out] = $m->console(['plugin:activate', 'ArchiveClaim']);
        $this->assertSame(0, $code, $out);
        [$code, $out] = $m->console(['diagnostics:run', '--all']);
        $this->assertStringContainsString('Archive claims: Matomo\'s archive Model: OK', $out, 'Matomo 5.2 as shipped: ours');

        // The "upgrade": one overridden method's signature changes in the throwaway copy.
        $model = "$m->root/core/DataAccess/Model.php";
        $source = file_get_contents($model);
        $this->assertSame(1, substr_count($source, 'public function startArchive($invalidation)'));
        file_put_contents($model, str_replace('public function startArchive($invalidation)', 'public function startArchive($invalidation): bool', $source));

        [$code, $out] = $m->console(['core:invalidate-report-data', '--dates=2024-01-01,2024-01-02', '--sites=1,2']);
        $this->assertSame(0, $code, $out);
        $queued = self::queued();
        $this->assertGreaterThan(4, $queued);

        // Before: the plugin put its subclass into the container unconditionally.
        $config = "$m->root/plugins/ArchiveClaim/config/config.php";
        $ours = file_get_contents($config);
        file_put_contents($config, "<?php\nreturn ['Piwik\\DataAccess\\Model' => Piwik\\DI::autowire('Piwik\\Plugins\\ArchiveClaim\\ClaimingModel')];\n");
        try {
            [$code, $out] = $m->console(['core:archive', '--url=http://localhost/']);
        } finally {
            file_put_contents($config, $ours);
        }
        $this->assertNotSame(0, $code, "the unguarded plugin stops core:archive:\n$out");
        $this->assertMatchesRegularExpression('/Declaration of Piwik\\\\Plugins\\\\ArchiveClaim\\\\ClaimingModel::startArchive\(\$invalidation\) must be compatible/', $out);
        $this->assertSame($queued, self::queued(), 'and nothing was archived');

        // Now: the plugin steps aside and Matomo archives on its own.
        [$code, $out] = $m->console(['core:archive', '--url=http://localhost/']);
        $this->assertSame(0, $code, $out);
        $this->assertSame([], self::failures($out), 'nothing logged a warning or an error');
        $this->assertStringContainsString('Archived website id 1, period = day', $out);
        $this->assertStringContainsString('Archived website id 2, period = month', $out);
        $this->assertSame(0, self::queued(), 'every invalidation archived');
        $notes = array_values(preg_grep('/is not the one the plugin was written for/', explode("\n", $out)));
        $this->assertCount(1, $notes, "one NOTICE per run:\n$out");
        $this->assertMatchesRegularExpression('/^NOTICE\b/', $notes[0]);
        $this->assertStringContainsString('startArchive is public startArchive($invalidation): bool', $notes[0]);
        $this->assertStringNotContainsString('registered; its claims are recorded natively', $out, 'no registration: Matomo\'s own claims');
        $this->assertSame(0, (int) $m->pdo()->query('SELECT COUNT(*) FROM matomo_archive_claim_process')->fetchColumn());
        $done = (int) $m->pdo()->query("SELECT COUNT(*) FROM matomo_archive_numeric_2024_01 WHERE name = 'done' AND value = 1")->fetchColumn();
        $this->assertGreaterThanOrEqual(6, $done, 'day, week and month archives of both sites were written');

        // The System Check names the method.
        [$code, $out] = $m->console(['diagnostics:run']);
        $this->assertMatchesRegularExpression('/^Archive claims: Matomo\'s archive Model: WARNING .*changed in startArchive\(\)/m', $out);
        $this->assertStringContainsString('stepped aside', $out);
        fwrite(STDERR, "\nMatomo upgrade safety (Model.php edited: startArchive() returns bool):\n  core:archive: exit 0, $queued invalidations archived\n  "
            . $notes[0] . "\n  " . implode("\n  ", preg_grep('/^Archive claims: Matomo\'s archive Model/', explode("\n", $out))) . "\n");
    }
}
