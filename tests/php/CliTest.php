<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

/** php/bin/archive-claim, run as an operator runs it, on a real database. */
final class CliTest extends ExtensionTestCase
{
    private const TOOL = __DIR__ . '/../../php/bin/archive-claim';

    /** @return array{0: int, 1: string, 2: string} exit code, stdout, stderr */
    private function tool(array $args, array $env = [], bool $withExtension = true): array
    {
        $cmd = TestDatabase::php(array_merge([self::TOOL], $args), $withExtension);
        $proc = proc_open($cmd, [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes, null, $env + ['PATH' => getenv('PATH')]);
        $out = stream_get_contents($pipes[1]);
        $err = stream_get_contents($pipes[2]);
        fclose($pipes[1]);
        fclose($pipes[2]);
        return [proc_close($proc), $out, $err];
    }

    /** A config.ini.php as Matomo writes it, for this test's database. */
    private function matomoConfigFile(array $general = []): string
    {
        $c = $this->config;
        $ini = "; <?php exit; ?> DO NOT REMOVE THIS LINE\n; file automatically generated or modified by Matomo\n\n[database]\n"
            . "host = \"{$c['host']}\"\nusername = \"{$c['username']}\"\npassword = \"{$c['password']}\"\n"
            . "dbname = \"{$c['dbname']}\"\ntables_prefix = \"{$c['tables_prefix']}\"\nport = {$c['port']}\n"
            . "adapter = \"PDO\\MYSQL\"\ncharset = \"utf8mb4\"\n\n";
        foreach ($general as $section => $settings) {
            $ini .= "[$section]\n";
            foreach ($settings as $k => $v) {
                $ini .= "$k = $v\n";
            }
        }
        $file = tempnam(sys_get_temp_dir(), 'config') . '.ini.php';
        file_put_contents($file, $ini);
        return $file;
    }

    private function envConnection(): array
    {
        $c = $this->config;
        return ['MATOMO_DB_HOST' => $c['host'], 'MATOMO_DB_PORT' => $c['port'], 'MATOMO_DB_USER' => $c['username'],
            'MATOMO_DB_PASSWORD' => $c['password'], 'MATOMO_DB_NAME' => $c['dbname'], 'MATOMO_DB_PREFIX' => $c['tables_prefix']];
    }

    public function testHelpAndUsageErrors(): void
    {
        [$code, $out] = $this->tool([]);
        $this->assertSame(2, $code);
        $this->assertStringContainsString('Usage: archive-claim', $out);
        foreach (['status', 'reap', 'install-schema'] as $command) {
            [$code, $out] = $this->tool([$command, '--help']);
            $this->assertSame(0, $code);
            $this->assertStringContainsString("archive-claim [connection] $command", $out);
        }
        [$code, , $err] = $this->tool(['frobnicate']);
        $this->assertSame(2, $code);
        $this->assertStringContainsString("unknown command 'frobnicate'", $err);
        [$code, , $err] = $this->tool(['status', '--bogus']);
        $this->assertSame(2, $code);
        $this->assertStringContainsString('unknown option --bogus for status', $err);
        [$code, , $err] = $this->tool(['status']);
        $this->assertSame(2, $code);
        $this->assertStringContainsString('no database given', $err);
    }

    public function testWithoutTheExtensionItSaysHowToLoadIt(): void
    {
        [$code, , $err] = $this->tool(['status'], $this->envConnection(), false);
        $this->assertSame(1, $code);
        $this->assertStringContainsString('extension is not loaded', $err);
        $this->assertStringContainsString('-d extension=', $err);
    }

    public function testStatusFromAMatomoConfigFile(): void
    {
        [$a, $b] = $this->queue([['idsite' => 1], ['idsite' => 2]]);
        $this->claimAs($a, 'server2', '41');
        $config = $this->matomoConfigFile();

        [$code, $out, $err] = $this->tool(['--config=' . $config, 'status']);
        $this->assertSame(0, $code, $err);
        $this->assertStringContainsString('server2: 1 in progress (0 alive, 0 dead, 1 unknown)', $out);
        $this->assertStringContainsString("#$a", $out);

        $this->claimAs($b, gethostname(), (string) $this->goneLocalPid());
        [$code, $json] = $this->tool(['status', '--json', '--config', $config]);
        $this->assertSame(3, $code, 'dead rows: exit code 3');
        $data = json_decode($json, true, flags: JSON_THROW_ON_ERROR);
        $this->assertSame(1, $data['hosts'][gethostname()]['dead']);
        unlink($config);
    }

    public function testReapWithTheEnvironmentAndTheConfigsTimeouts(): void
    {
        [$dead, $old, $oldSite5] = $this->queue([['idsite' => 1], ['idsite' => 2], ['idsite' => 5]]);
        $this->claimAs($dead, gethostname(), (string) $this->goneLocalPid());
        $this->claimAs($old, 'server2', '7', 'NOW() - INTERVAL 2 HOUR');
        $this->claimAs($oldSite5, 'server2', '8', 'NOW() - INTERVAL 2 HOUR');
        $checksum = $this->tableChecksum();

        [$code, $out] = $this->tool(['reap', '--dry-run'], $this->envConnection());
        $this->assertSame(3, $code);
        $this->assertStringContainsString('1 of 3 in-progress invalidations would be released', $out);
        $this->assertSame($checksum, $this->tableChecksum());

        $config = $this->matomoConfigFile(['General' => ['archive_failure_recovery_timeout' => 3600],
            'General_5' => ['archive_failure_recovery_timeout' => 86400]]);
        [$code, $out, $err] = $this->tool(['--config=' . $config, 'reap']);
        $this->assertSame(0, $code, $err);
        $this->assertStringContainsString('2 of 3 in-progress invalidations released (2 re-queued, 0 deleted as duplicates); 1 kept.', $out);
        $this->assertStringContainsString('(dead, timeout): reset', $out);
        $this->assertSame(1, (int) $this->row($oldSite5)['status'], '[General_5] gives site 5 a day');

        [$code] = $this->tool(['--config=' . $config, 'reap', '--timeout=60']);
        $this->assertSame(0, $code);
        $this->assertSame(0, (int) $this->row($oldSite5)['status'], '--timeout overrides the config');
        unlink($config);
    }

    public function testReapForceReleasesANamedHost(): void
    {
        [$id] = $this->queue([[]]);
        $this->claimAs($id, 'server2', '7');
        [$code, $out] = $this->tool(['reap', '--processing-host', 'server2', '--force'], $this->envConnection());
        $this->assertSame(0, $code);
        $this->assertStringContainsString('(dead, host_declared_dead): reset', $out);
        [$code, , $err] = $this->tool(['reap', '--older-than=yesterday-ish'], $this->envConnection());
        $this->assertSame(2, $code);
        $this->assertStringContainsString('--older-than', $err);
    }

    public function testOlderThanMeansAnInstantWhateverTheDatabasesTimeZone(): void
    {
        // ts_started is the database's local time; "1 hour ago" was once read as UTC, so with
        // the database five hours behind UTC a claim two seconds old matched.
        $admin = TestDatabase::admin();
        $zone = $admin->query('SELECT @@global.time_zone')->fetchColumn();
        $admin->exec("SET GLOBAL time_zone = '-05:00'");
        try {
            $this->pdo->exec("SET time_zone = '-05:00'");
            [$fresh, $old] = $this->queue([[], []]);
            $this->claimAs($fresh, 'server2', '7', 'NOW() - INTERVAL 2 SECOND');
            $this->claimAs($old, 'server2', '8', 'NOW() - INTERVAL 2 HOUR');
            foreach (['--older-than=1 hour ago', '--older-than=' . gmdate('Y-m-d H:i:s', time() - 3600)] as $olderThan) {
                [$code, $out, $err] = $this->tool(['reap', '--dry-run', '--force', '--processing-host=server2', $olderThan],
                    $this->envConnection());
                $this->assertSame(3, $code, $err);
                $this->assertStringContainsString('1 of 1 in-progress invalidations would be released', $out, $olderThan);
                $this->assertStringContainsString("#$old ", $out);
                $this->assertStringNotContainsString("#$fresh ", $out);
            }
            [, $out] = $this->tool(['reap', '--dry-run', '--force', '--processing-host=server2', '--newer-than=1 hour ago'],
                $this->envConnection());
            $this->assertStringContainsString("#$fresh ", $out);
            $this->assertStringNotContainsString("#$old ", $out);
        } finally {
            $admin->exec('SET GLOBAL time_zone = ' . $admin->quote((string) $zone));
        }
    }

    public function testConnectionFailuresAreExitCode1(): void
    {
        [$code, , $err] = $this->tool(['status', '--password=wrong-password'], $this->envConnection());
        $this->assertSame(1, $code);
        $this->assertStringContainsString('cannot connect', $err);
        $this->assertStringNotContainsString('wrong-password', $err);
        [$code, , $err] = $this->tool(['status', '--prefix=nosuch_'], $this->envConnection());
        $this->assertSame(1, $code);
        $this->assertStringContainsString('nosuch_archive_invalidations', $err);
    }

    public function testThePasswordComesFromAFileOrTheEnvironmentNeverOnlyFromTheCommandLine(): void
    {
        $env = $this->envConnection();
        unset($env['MATOMO_DB_PASSWORD']);
        $file = tempnam(sys_get_temp_dir(), 'pw');
        file_put_contents($file, $this->config['password'] . "\n");
        try {
            [$code, $out, $err] = $this->tool(['--password-file=' . $file, 'status'], $env);
            $this->assertSame(0, $code, $err);
            $this->assertStringContainsString('No invalidation is in progress', $out);
            [$code, , $err] = $this->tool(['status'], $env + ['MATOMO_DB_PASSWORD_FILE' => $file]);
            $this->assertSame(0, $code, $err);
            [$code, , $err] = $this->tool(['--password-file=/nonexistent/pw', 'status'], $env);
            $this->assertSame(2, $code);
            $this->assertStringContainsString('cannot read the password file', $err);
            // Still accepted on the command line, with a word about ps.
            [$code, , $err] = $this->tool(['--password=' . $this->config['password'], 'status'], $env);
            $this->assertSame(0, $code, $err);
            $this->assertStringContainsString('visible to every user of this machine in ps', $err);
        } finally {
            unlink($file);
        }
    }
}
