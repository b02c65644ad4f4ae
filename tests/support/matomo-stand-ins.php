<?php
/**
 * The smallest stand-ins for the Matomo classes the ArchiveClaim plugin extends or calls, so its
 * files load and its event handlers and commands run outside a Matomo checkout. They hold
 * settings and collect output; every decision under test is the plugin's and the extension's.
 */

declare(strict_types=1);

namespace Piwik {
    class Plugin
    {
    }

    /** Matomo's config: sections as arrays, set by the test. */
    class Config
    {
        private static ?Config $instance = null;
        /** @var array<string, array<string, mixed>> */
        public array $sections = [];

        public static function getInstance(): self
        {
            return self::$instance ??= new self();
        }

        public function __get(string $section)
        {
            return $this->sections[$section] ?? [];
        }
    }
}

namespace Piwik\Config {
    use Piwik\Config;

    /** Matomo's lookup of [General] settings with [General_<idsite>] overrides. */
    class GeneralConfig
    {
        public static function getConfigValue(string $name, ?int $idSite = null)
        {
            $config = Config::getInstance();
            if ($idSite !== null && isset($config->sections["General_$idSite"][$name])) {
                return $config->sections["General_$idSite"][$name];
            }
            return $config->sections['General'][$name] ?? null;
        }
    }
}

namespace Piwik\Log {
    interface LoggerInterface
    {
        public function error($message, array $context = []);
        public function warning($message, array $context = []);
        public function info($message, array $context = []);
    }

    /** Keeps what was logged, with {placeholders} filled in as Matomo's logger does. */
    class MemoryLogger implements LoggerInterface
    {
        /** @var list<array{0: string, 1: string}> */
        public array $records = [];

        public function error($message, array $context = [])
        {
            $this->log('error', $message, $context);
        }

        public function warning($message, array $context = [])
        {
            $this->log('warning', $message, $context);
        }

        public function info($message, array $context = [])
        {
            $this->log('info', $message, $context);
        }

        private function log(string $level, string $message, array $context): void
        {
            $this->records[] = [$level, strtr($message, array_combine(
                array_map(fn ($k) => '{' . $k . '}', array_keys($context)),
                array_map('strval', array_values($context))
            ) ?: [])];
        }
    }
}

namespace Piwik\Container {
    class StaticContainer
    {
        /** @var array<string, object> */
        public static array $entries = [];

        public static function get(string $id)
        {
            return self::$entries[$id] ?? throw new \RuntimeException("no stand-in for $id");
        }
    }
}

namespace Piwik\Plugin {
    /**
     * Matomo's ConsoleCommand API as the plugin's commands use it. run() plays Symfony's part:
     * it refuses options the command did not define.
     */
    abstract class ConsoleCommand
    {
        public const SUCCESS = 0;
        public const FAILURE = 1;

        private string $name = '';
        /** @var array<string, array{array: bool, value: bool, default: mixed}> */
        private array $definition = [];
        private array $options = [];
        private array $lines = [];

        public function __construct()
        {
            $this->configure();
        }

        abstract protected function configure();

        abstract protected function doExecute(): int;

        public function setName(string $name)
        {
            $this->name = $name;
            return $this;
        }

        public function getName(): string
        {
            return $this->name;
        }

        public function setDescription(string $text)
        {
            return $this;
        }

        public function setHelp(string $text)
        {
            return $this;
        }

        public function addRequiredValueOption(string $name, ?string $shortcut = null, string $description = '', $default = null, bool $acceptArrays = false)
        {
            $this->definition[$name] = ['array' => $acceptArrays, 'value' => true, 'default' => $acceptArrays ? [] : $default];
            return $this;
        }

        public function addNoValueOption(string $name, ?string $shortcut = null, string $description = '')
        {
            $this->definition[$name] = ['array' => false, 'value' => false, 'default' => false];
            return $this;
        }

        /** @return array{0: int, 1: string} exit code and output */
        public function run(array $options): array
        {
            foreach ($options as $name => $value) {
                if (!isset($this->definition[$name])) {
                    throw new \InvalidArgumentException("The \"--$name\" option does not exist.");
                }
            }
            $this->options = $options;
            $this->lines = [];
            $code = $this->doExecute();
            return [$code, implode("\n", $this->lines)];
        }

        protected function getInput(): object
        {
            $definition = $this->definition;
            $options = $this->options;
            return new class ($definition, $options) {
                public function __construct(private array $definition, private array $options)
                {
                }

                public function getOption(string $name)
                {
                    return $this->options[$name] ?? $this->definition[$name]['default'];
                }
            };
        }

        protected function getOutput(): object
        {
            $lines = &$this->lines;
            return new class ($lines) {
                public function __construct(private array &$lines)
                {
                }

                public function writeln(string $line): void
                {
                    $this->lines[] = $line;
                }
            };
        }
    }
}

namespace {
    // Matomo maps Piwik\Plugins\<Name>\X to plugins/<Name>/X.php; so do we.
    spl_autoload_register(function (string $class): void {
        $prefix = 'Piwik\\Plugins\\ArchiveClaim\\';
        if (str_starts_with($class, $prefix)) {
            $file = __DIR__ . '/../../php/ArchiveClaim/' . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
            if (is_file($file)) {
                require $file;
            }
        }
    });
}
